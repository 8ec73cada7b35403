//! The benchmarks' view of the lab (`xban-lab`): every bench lab is named
//! after [`LabSpec::BENCH`] and every agent's pins after [`PIN_NAME`], so
//! that [`crate::run`] can reap what a killed run left behind.
//!
//! - [`AgentRig`]: the real agent with a jail config in its own lab, for the
//!   agent-level areas (logmatch, latency, scale): started and stopped
//!   under measurement, asked over its control socket.
//! - [`Agent`]: the agent on a lab the area owns (XDP, flood, tarpit, geo),
//!   which also runs other mechanisms in the same namespaces.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context, Result};
use xban_lab::{cmd, AgentDir, AgentProcess, Control, Lab, LabSpec, Rig, Start, STATUS_REQUEST};

use crate::Ctx;

/// Pins at `/sys/fs/bpf/xban-bench-PID-N`.
pub(crate) const PIN_NAME: &str = "bench";

/// A fresh bench lab.
pub(crate) fn lab() -> Result<Lab> {
    Lab::with(&LabSpec::BENCH)
}

/// The agent under test for the XDP-level areas: `XBAN_BIN` when set (e.g.
/// to compare an older build with the same bench code), else the fresh
/// build.
pub(crate) fn agent_binary(ctx: &Ctx) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("XBAN_BIN") {
        let bin = PathBuf::from(bin);
        ensure!(bin.is_file(), "XBAN_BIN={} does not exist", bin.display());
        return Ok(bin);
    }
    Ok(ctx.xban.clone())
}

/// The agent in its lab, for the agent-level areas. Dropping it kills the
/// agent, tears down what it put in the kernel (`xban teardown`), then
/// removes the namespaces.
pub(crate) struct AgentRig(Rig);

impl std::ops::Deref for AgentRig {
    type Target = Rig;
    fn deref(&self) -> &Rig {
        &self.0
    }
}

impl AgentRig {
    /// `rest` is the config after `[agent]`; `{LOG}` stands for the log path.
    pub(crate) fn new(ctx: &Ctx, rest: &str) -> Result<AgentRig> {
        let dir = AgentDir::with(&ctx.xban, PIN_NAME, Some(&ctx.scratch))?;
        Ok(AgentRig(Rig::new(&LabSpec::BENCH, dir, "", rest)?))
    }

    /// The command line that starts the agent, for the report.
    pub(crate) fn run_command_text(&self) -> String {
        cmd::display(&AgentProcess::command(&self.lab.srv_ns, &self.dir))
    }

    /// Starts `xban run` (without waiting for it).
    pub(crate) fn start(&mut self) -> Result<()> {
        self.0.spawn(&Start {
            run_args: &[],
            rust_log: "info",
            own_group: false,
        })
    }

    /// Waits until the control socket answers `status`; the time from spawn.
    pub(crate) fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        self.0.wait_ready(timeout)
    }

    pub(crate) fn start_and_wait(&mut self) -> Result<Duration> {
        self.start()?;
        self.wait_ready(Duration::from_secs(120))
    }

    /// When the running agent was spawned.
    pub(crate) fn spawned_at(&self) -> Option<SystemTime> {
        self.running().ok().map(AgentProcess::spawned_at)
    }

    /// Sends control requests from any thread.
    pub(crate) fn requester(&self) -> Control {
        self.dir.control()
    }

    /// `xban status --json`.
    pub(crate) fn status(&self) -> Result<serde_json::Value> {
        self.requester().request(STATUS_REQUEST)
    }

    /// A counter of a jail (`lines`, `failures_total`, `bans_total`).
    pub(crate) fn jail_counter(&self, jail: usize, name: &str) -> Result<u64> {
        let s = self.status()?;
        s["jails"][jail]["counters"][name]
            .as_u64()
            .with_context(|| format!("status has no jails[{jail}].counters.{name}: {s}"))
    }

    /// Appends bytes to the followed log in one write.
    pub(crate) fn append(&self, bytes: &[u8]) -> Result<()> {
        self.dir.append_bytes(bytes)
    }

    /// The log file, opened for appending (for many small timed writes).
    pub(crate) fn log_writer(&self) -> Result<File> {
        self.dir.log_writer()
    }

    /// VmRSS, VmHWM and RssAnon of the agent, in KiB.
    pub(crate) fn memory_kib(&self) -> Result<(u64, u64, u64)> {
        self.running()?.memory_kib()
    }

    /// CPU time the agent used so far, user and system (its threads and its
    /// system calls, such as map writes), in seconds: less noisy than wall
    /// time on a shared machine.
    pub(crate) fn cpu_secs(&self) -> Result<(f64, f64)> {
        let pid = self.running()?.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command (which may hold spaces), from field 3.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        // SAFETY: sysconf has no memory effects.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let get = |i: usize| -> Result<f64> {
            Ok(f.get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("/proc/{pid}/stat: {stat}"))?
                / tick)
        };
        // utime and stime: fields 14 and 15, so 11 and 12 after the state.
        Ok((get(11)?, get(12)?))
    }

    /// Kernel memory of the two ban tries, v4 and v6, in bytes.
    pub(crate) fn ban_map_bytes(&self) -> Result<(u64, u64)> {
        self.dir.ban_map_bytes()
    }

    pub(crate) fn bpftool_command_text(&self) -> String {
        format!(
            "bpftool -j map show pinned {}/bans_v4   # bytes_memlock",
            self.dir.pin_dir.display()
        )
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub(crate) fn stop(&mut self) -> Result<()> {
        self.0.stop(Duration::from_secs(60))
    }

    /// `xban teardown` after the agent stopped: XDP detached, maps and pins
    /// removed; the database stays.
    pub(crate) fn teardown(&mut self) -> Result<()> {
        self.stop()?;
        if self.dir.pin_dir.exists() {
            self.dir.xban_ok(&["teardown"])?;
        }
        Ok(())
    }
}

/// `xban run` in a lab the area owns, with a `[tarpit]` section and a jail
/// on its own log. Dropping it kills the agent and tears down offline.
pub(crate) struct Agent {
    /// Declared first: killed before the directory's teardown.
    process: AgentProcess,
    pub dir: AgentDir,
}

impl Agent {
    pub(crate) fn start(bin: &Path, lab: &Lab, ignoreip: &str) -> Result<Agent> {
        Self::start_with(bin, lab, ignoreip, "fallback = \"DROP\"")
    }

    /// As [`start`](Self::start), with these `[tarpit]` keys.
    pub(crate) fn start_with(bin: &Path, lab: &Lab, ignoreip: &str, tarpit: &str) -> Result<Agent> {
        let dir = AgentDir::with(bin, PIN_NAME, None)?;
        std::fs::create_dir_all(dir.path("filters"))?;
        dir.write_config(
            lab,
            &format!(
                "\n[tarpit]\n{tarpit}\n\n[defaults]\nignoreip = {ignoreip}\n\n[jails.bench]\nlogpath = [\"{{LOG}}\"]\nfailregex = ['fail <HOST>$']\n"
            ),
        )?;
        let how = Start {
            run_args: &[],
            rust_log: "warn",
            own_group: false,
        };
        let mut process = AgentProcess::spawn(&lab.srv_ns, &dir, &how)?;
        let control = dir.control();
        process.wait_ready(Duration::from_secs(30), Duration::from_millis(20), || {
            control.request(STATUS_REQUEST).is_ok()
        })?;
        Ok(Agent { process, dir })
    }

    /// `xban ARGS` in the server namespace; stdout.
    pub(crate) fn xban(&self, args: &[&str]) -> Result<String> {
        self.dir.xban_ok(args)
    }

    pub(crate) fn pin_dir(&self) -> &Path {
        &self.dir.pin_dir
    }

    /// Teardown through the agent (detach, unpin, exit), checked.
    pub(crate) fn stop(mut self) -> Result<()> {
        self.xban(&["teardown"])?;
        self.process
            .wait_exit_mut(Duration::from_secs(30))
            .context("xban did not exit after teardown")?;
        Ok(())
    }
}
