//! The agent rig: a private directory per agent (config, followed log,
//! state, socket, pins), `xban run` in a lab's server namespace, its control
//! socket, its log, and clean-up on drop: the agent killed, what it put in
//! the kernel torn down (`xban teardown`), its pins and files removed, then
//! the namespaces.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::cmd::{cleanup, display, run};
use crate::netns::next_id;
use crate::veth::{Lab, LabSpec};

/// The `xban` binary under test (set by `cargo xtask test`).
pub fn xban_bin() -> PathBuf {
    let p = std::env::var_os("XBAN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/xban")
        });
    assert!(
        p.exists(),
        "xban binary not found at {} (run the tests with `cargo xtask test`, which builds it with its XDP program)",
        p.display()
    );
    p
}

/// Appends `lines` to the log at `path` (which must exist), as a service
/// would.
pub fn append_lines(path: &Path, lines: &[String]) -> Result<()> {
    let mut f = OpenOptions::new().append(true).open(path)?;
    for l in lines {
        writeln!(f, "{l}")?;
    }
    f.flush()?;
    Ok(())
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `n` lines of `text`, for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// The `[agent]` section for an agent on `srv_if` keeping its files in
/// `dir` and its pins in `pin_dir`; `agent_keys` are more `[agent]` keys.
pub fn agent_section(srv_if: &str, pin_dir: &Path, dir: &Path, agent_keys: &str) -> String {
    format!(
        "[agent]\ninterfaces = [\"{srv_if}\"]\nxdp_mode = \"native\"\nbpf_pin_dir = \"{}\"\nstate_dir = \"{}\"\nsocket = \"{}\"\nfilters_dir = \"{}\"\n{agent_keys}\n",
        pin_dir.display(),
        dir.join("state").display(),
        dir.join("xban.sock").display(),
        dir.join("filters").display(),
    )
}

/// Where an agent keeps everything: config, log, state, socket, pins.
pub struct AgentDir {
    pub dir: tempfile::TempDir,
    pub pin_dir: PathBuf,
    bin: PathBuf,
    /// The lab's server namespace: `xban` commands run there, so teardown's
    /// firewall clean-up never touches the machine's own namespace.
    netns: RefCell<Option<String>>,
}

impl AgentDir {
    /// The integration tests' directory, for [`xban_bin`].
    pub fn new() -> Result<AgentDir> {
        AgentDir::with(&xban_bin(), "test", None)
    }

    /// A directory `xban-{name}-*` (under `parent`, else the temp dir) and
    /// pins at `/sys/fs/bpf/xban-{name}-{pid}-{n}`, for the agent `bin`.
    pub fn with(bin: &Path, name: &str, parent: Option<&Path>) -> Result<AgentDir> {
        let mut b = tempfile::Builder::new();
        let prefix = format!("xban-{name}-");
        b.prefix(&prefix);
        let dir = match parent {
            Some(p) => b.tempdir_in(p)?,
            None => b.tempdir()?,
        };
        Ok(AgentDir {
            dir,
            pin_dir: PathBuf::from(format!(
                "{}{}-{}",
                pin_prefix(name),
                std::process::id(),
                next_id()
            )),
            bin: bin.to_path_buf(),
            netns: RefCell::new(None),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("xban.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.path("auth.log")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.path("xban.sock")
    }

    /// Write a config for `lab`: the `[agent]` section is filled in, `rest`
    /// holds `[defaults]`/`[jails]` (use `{LOG}` for the log path).
    pub fn write_config(&self, lab: &Lab, rest: &str) -> Result<()> {
        self.write_config_with_agent(lab, "", rest)
    }

    /// As [`write_config`](Self::write_config), with more `[agent]` keys.
    pub fn write_config_with_agent(&self, lab: &Lab, agent_keys: &str, rest: &str) -> Result<()> {
        *self.netns.borrow_mut() = Some(lab.srv_ns.clone());
        let text = agent_section(&lab.srv_if, &self.pin_dir, self.dir.path(), agent_keys)
            + &rest.replace("{LOG}", &self.log_path().display().to_string());
        std::fs::write(self.config_path(), text)?;
        if !self.log_path().exists() {
            std::fs::write(self.log_path(), "")?;
        }
        Ok(())
    }

    /// Append lines to the log, as a service would.
    pub fn append_log(&self, lines: &[String]) -> Result<()> {
        append_lines(&self.log_path(), lines)
    }

    /// Appends bytes to the followed log in one write, as a syslog daemon
    /// flushing a buffer would.
    pub fn append_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.log_writer()?.write_all(bytes)?;
        Ok(())
    }

    /// The log file, opened for appending (for many small timed writes).
    pub fn log_writer(&self) -> Result<File> {
        Ok(OpenOptions::new().append(true).open(self.log_path())?)
    }

    /// `xban -c CONFIG` (run in the lab's server namespace once a config
    /// for a lab is written): the agent and its commands see only the lab's
    /// interfaces and firewall. The socket and pins are files, reachable
    /// from anywhere.
    pub fn command(&self) -> Command {
        let mut cmd = match self.netns.borrow().as_ref() {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("-c").arg(self.config_path()).env("NO_COLOR", "1");
        cmd
    }

    /// Run an `xban` command against this agent's config.
    pub fn xban(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(self.command().args(args).stdin(Stdio::null()).output()?)
    }

    /// Start an `xban` command without waiting for it (stdout piped).
    pub fn xban_spawn(&self, args: &[&str]) -> Result<Child> {
        Ok(self
            .command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// Run an `xban` command that must succeed; returns stdout.
    pub fn xban_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.xban(args)?;
        if !out.status.success() {
            bail!(
                "`xban {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `xban ARGS --json`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.xban_ok(&args)?;
        serde_json::from_str(&text).with_context(|| format!("xban printed invalid JSON: {text}"))
    }

    /// `xban banned --json`.
    pub fn banned(&self) -> Result<Vec<serde_json::Value>> {
        match self.json(&["banned"])? {
            serde_json::Value::Array(bans) => Ok(bans),
            other => bail!("`xban banned --json` printed {other}"),
        }
    }

    pub fn banned_addresses(&self) -> Result<Vec<String>> {
        Ok(self
            .banned()?
            .iter()
            .map(|b| b["address"].as_str().unwrap_or_default().to_string())
            .collect())
    }

    /// `xban stats --json` (read from the pinned map).
    pub fn stats(&self) -> Result<serde_json::Value> {
        self.json(&["stats"])
    }

    /// The agent's control socket, for requests from any thread.
    pub fn control(&self) -> Control {
        Control(self.socket_path())
    }

    /// Kernel memory of the two ban tries (`bytes_memlock` in `bpftool map
    /// show`), in bytes, v4 and v6.
    pub fn ban_map_bytes(&self) -> Result<(u64, u64)> {
        let one = |name: &str| -> Result<u64> {
            let path = self.pin_dir.join(name);
            let out = run(
                "bpftool",
                &["-j", "map", "show", "pinned", &path.to_string_lossy()],
            )?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            v["bytes_memlock"].as_u64().with_context(|| {
                format!(
                    "bpftool map show {}: no bytes_memlock in {out}",
                    path.display()
                )
            })
        };
        Ok((one("bans_v4")?, one("bans_v6")?))
    }
}

/// `/sys/fs/bpf/xban-{name}-`: what [`crate::reap_leftovers`] is given.
pub fn pin_prefix(name: &str) -> String {
    format!("/sys/fs/bpf/xban-{name}-")
}

impl Drop for AgentDir {
    fn drop(&mut self) {
        // Whatever the agent left attached or pinned goes with it.
        if self.pin_dir.exists() {
            cleanup(self.command().arg("teardown"));
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
    }
}

/// The agent's control socket.
#[derive(Debug, Clone)]
pub struct Control(PathBuf);

impl Control {
    fn send(&self, json: &str) -> Result<UnixStream> {
        let mut s = UnixStream::connect(&self.0)?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        s.write_all(json.as_bytes())?;
        s.write_all(b"\n")?;
        Ok(s)
    }

    /// One request; the reply's `data`.
    pub fn request(&self, json: &str) -> Result<serde_json::Value> {
        let mut line = String::new();
        BufReader::new(self.send(json)?).read_line(&mut line)?;
        let reply: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("agent reply {line:?}"))?;
        if reply["ok"] != serde_json::Value::Bool(true) {
            bail!("agent refused {json}: {}", reply["error"]);
        }
        Ok(reply["data"].clone())
    }

    /// A request whose reply is read as bytes, not parsed: when its first
    /// and last bytes came (ms from the request) and the text.
    pub fn timed_raw(&self, json: &str) -> Result<RawReply> {
        let started = Instant::now();
        let mut s = self.send(json)?;
        let mut first = [0u8; 1];
        s.read_exact(&mut first)?;
        let first_byte_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        let last_byte_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut bytes = first.to_vec();
        bytes.extend(rest);
        let text = String::from_utf8(bytes).context("reply not UTF-8")?;
        if !text.starts_with("{\"ok\":true") {
            bail!("agent refused {json}: {}", tail(&text, 3));
        }
        Ok(RawReply {
            first_byte_ms,
            last_byte_ms,
            text,
        })
    }

    /// A request's round trip, in milliseconds.
    pub fn timed(&self, json: &str) -> Result<(f64, serde_json::Value)> {
        let started = Instant::now();
        let data = self.request(json)?;
        Ok((started.elapsed().as_secs_f64() * 1e3, data))
    }
}

/// A reply read as bytes (see [`Control::timed_raw`]).
pub struct RawReply {
    pub first_byte_ms: f64,
    pub last_byte_ms: f64,
    pub text: String,
}

/// How `xban run` is started.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    /// More arguments to `xban run` (e.g. `--dry-run`).
    pub run_args: &'a [&'a str],
    pub rust_log: &'a str,
    /// In its own process group: a Ctrl-C meant for the caller does not
    /// reach it, so the caller can stop it in order.
    pub own_group: bool,
}

impl Start<'static> {
    pub const TESTS: Start<'static> = Start {
        run_args: &[],
        rust_log: "info,xban=debug",
        own_group: false,
    };
}

/// A running agent process in a lab's server namespace.
pub struct AgentProcess {
    child: Option<Child>,
    pub stderr_path: PathBuf,
    spawned_at: SystemTime,
}

impl AgentProcess {
    /// Start `xban run` in the server namespace and wait until it answers.
    pub fn start(lab: &Lab, dir: &AgentDir) -> Result<AgentProcess> {
        Self::start_with(lab, dir, &[])
    }

    /// Start with extra arguments to `xban run` (e.g. `--dry-run`).
    pub fn start_with(lab: &Lab, dir: &AgentDir, run_args: &[&str]) -> Result<AgentProcess> {
        let mut agent = Self::spawn(
            &lab.srv_ns,
            dir,
            &Start {
                run_args,
                ..Start::TESTS
            },
        )?;
        agent.wait_ready(Duration::from_secs(30), Duration::from_millis(100), || {
            dir.xban(&["status", "--json"])
                .is_ok_and(|o| o.status.success())
        })?;
        Ok(agent)
    }

    /// The command line that starts the agent in `ns`.
    pub fn command(ns: &str, dir: &AgentDir) -> Command {
        // nsenter --net only, without --fork: it execs the agent, so the
        // child's pid is the agent's (what /proc/PID/status must be read
        // for), and the agent shares our mount namespace, so its bpffs pins
        // are the ones we (and bpftool) see.
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"))
            .arg(&dir.bin)
            .arg("-c")
            .arg(dir.config_path())
            .arg("run");
        c
    }

    /// Starts `xban run` in `ns` without waiting for it.
    pub fn spawn(ns: &str, dir: &AgentDir, how: &Start) -> Result<AgentProcess> {
        let stderr_path = dir.path(&format!("agent-{}.log", next_id()));
        let mut cmd = Self::command(ns, dir);
        cmd.args(how.run_args)
            .env("RUST_LOG", how.rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr_path)?);
        if how.own_group {
            cmd.process_group(0);
        }
        let spawned_at = SystemTime::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", display(&cmd)))?;
        Ok(AgentProcess {
            child: Some(child),
            stderr_path,
            spawned_at,
        })
    }

    /// Polls `ready` every `every` until it holds; the time from spawn.
    /// Fails with the agent's log when it exits or `timeout` passes.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        every: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().context("the agent is not running")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!("xban run exited with {status}:\n{}", tail(&self.log(), 30));
            }
            if ready() {
                return Ok(self.spawned_at.elapsed().unwrap_or_default());
            }
            if Instant::now() > deadline {
                bail!(
                    "xban run did not answer within {timeout:?}:\n{}",
                    tail(&self.log(), 30)
                );
            }
            std::thread::sleep(every);
        }
    }

    /// The agent's stderr so far (its tracing log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// When the agent was spawned.
    pub fn spawned_at(&self) -> SystemTime {
        self.spawned_at
    }

    /// VmRSS, VmHWM and RssAnon (the agent's own heap: the mmapped fast
    /// path maps count in VmRSS but are kernel memory), in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64, u64)> {
        let pid = self.pid();
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?, field("RssAnon:")?))
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.terminate(Duration::from_secs(15))
    }

    /// SIGTERM, then wait up to `timeout` (then kill and fail).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.take().context("the agent is not running")?;
        // If the signal fails, reap() kills the process after the timeout.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.reap(child, timeout)
    }

    /// Wait for the process to exit by itself.
    pub fn wait_exit(mut self, timeout: Duration) -> Result<ExitStatus> {
        self.wait_exit_mut(timeout)
    }

    /// As [`wait_exit`](Self::wait_exit), keeping the handle (and its log).
    pub fn wait_exit_mut(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.take().context("the agent is not running")?;
        self.reap(child, timeout)
    }

    /// Wait up to `timeout`, then kill: never leaves a process behind.
    fn reap(&self, mut child: Child, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "xban did not exit within {timeout:?}; killed:\n{}",
                    tail(&self.log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no clean-up by the agent.
    pub fn kill9(mut self) -> Result<()> {
        let mut child = self.child.take().unwrap();
        let killed = child.kill();
        child.wait()?;
        Ok(killed?)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A lab, an agent directory for it and (when started) the agent: what the
/// demo and the benchmarks run. Dropping it asks a running agent to tear
/// down (then kills it), tears down offline what remains, removes the
/// files, then the namespaces.
pub struct Rig {
    pub agent: Option<AgentProcess>,
    pub dir: AgentDir,
    pub lab: Lab,
}

impl Rig {
    /// A lab after `spec` and a config for it: `[agent]` with
    /// `agent_keys`, then `rest` (`{LOG}` stands for the log path).
    pub fn new(spec: &LabSpec, dir: AgentDir, agent_keys: &str, rest: &str) -> Result<Rig> {
        let lab = Lab::with(spec)?;
        std::fs::create_dir_all(dir.path("filters"))?;
        dir.write_config_with_agent(&lab, agent_keys, rest)?;
        Ok(Rig {
            agent: None,
            dir,
            lab,
        })
    }

    /// Starts `xban run` without waiting for it.
    pub fn spawn(&mut self, how: &Start) -> Result<()> {
        if self.agent.as_ref().is_some_and(AgentProcess::is_running) {
            bail!("the agent is already running");
        }
        self.agent = Some(AgentProcess::spawn(&self.lab.srv_ns, &self.dir, how)?);
        Ok(())
    }

    /// Waits until the control socket answers `status` (polled every
    /// 2 ms); the time from spawn.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let control = self.dir.control();
        self.running_mut()?
            .wait_ready(timeout, Duration::from_millis(2), || {
                control.request(STATUS_REQUEST).is_ok()
            })
    }

    /// Starts the agent and waits (up to `timeout`) until it answers.
    pub fn start(&mut self, how: &Start, timeout: Duration) -> Result<Duration> {
        self.spawn(how)?;
        self.wait_ready(timeout)
    }

    pub fn running(&self) -> Result<&AgentProcess> {
        self.agent
            .as_ref()
            .filter(|a| a.is_running())
            .context("the agent is not running")
    }

    fn running_mut(&mut self) -> Result<&mut AgentProcess> {
        self.agent
            .as_mut()
            .filter(|a| a.is_running())
            .context("the agent is not running")
    }

    /// `xban ARGS` in the server namespace; stdout.
    pub fn xban(&self, args: &[&str]) -> Result<String> {
        self.dir.xban_ok(args)
    }

    /// The agent's log (of its last start).
    pub fn agent_log(&self) -> String {
        self.agent
            .as_ref()
            .map(AgentProcess::log)
            .unwrap_or_default()
    }

    /// SIGTERM, then wait (up to `timeout`) for a clean exit; a failing
    /// exit is an error with the agent's log.
    pub fn stop(&mut self, timeout: Duration) -> Result<()> {
        let Some(agent) = self.agent.as_mut().filter(|a| a.is_running()) else {
            return Ok(());
        };
        let status = agent.terminate(timeout)?;
        if !status.success() {
            bail!("xban run exited with {status}:\n{}", tail(&agent.log(), 30));
        }
        Ok(())
    }

    /// `xban teardown` through the running agent (XDP detached, pins
    /// removed, the agent exits), checked; its output.
    pub fn teardown(&mut self, timeout: Duration) -> Result<String> {
        let out = self.dir.xban_ok(&["teardown"])?;
        if let Some(agent) = self.agent.as_mut().filter(|a| a.is_running()) {
            agent
                .wait_exit_mut(timeout)
                .context("xban did not exit after the teardown")?;
        }
        if self.dir.pin_dir.exists() {
            bail!(
                "{} is still there after the teardown",
                self.dir.pin_dir.display()
            );
        }
        Ok(out)
    }
}

/// The `status` request, as `xban status --json` sends it.
pub const STATUS_REQUEST: &str = "{\"cmd\":\"status\",\"jail\":null}";

impl Drop for Rig {
    fn drop(&mut self) {
        let Some(mut agent) = self.agent.take().filter(|a| a.is_running()) else {
            return;
        };
        // Asks the running agent to remove XDP, pins, chain and sets; the
        // agent then exits by itself.
        cleanup(self.dir.command().arg("teardown"));
        let _ = agent.wait_exit_mut(Duration::from_secs(10));
        // Then AgentDir's drop tears down offline what is left, and Lab's
        // removes the namespaces.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_section_keeps_everything_in_the_lab() {
        let text = agent_section(
            "xd1s",
            Path::new("/sys/fs/bpf/xban-demo-1-0"),
            Path::new("/tmp/d"),
            "",
        );
        assert!(text.contains("interfaces = [\"xd1s\"]"), "{text}");
        assert!(
            text.contains("bpf_pin_dir = \"/sys/fs/bpf/xban-demo-1-0\""),
            "{text}"
        );
        assert!(text.contains("socket = \"/tmp/d/xban.sock\""), "{text}");
        assert!(text.contains("state_dir = \"/tmp/d/state\""), "{text}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
