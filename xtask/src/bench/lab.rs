//! A private place for the real agent to run: two network namespaces joined
//! by a veth pair (documentation addresses only), the agent in one of them
//! with XDP on its end of the veth, and its own pin directory, state
//! directory, socket and log file. The machine's own interfaces are never
//! touched. Everything is removed on drop, also when a benchmark panics;
//! what a killed run left behind is removed by the next one
//! ([`reap_leftovers`]).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use super::{tail, Ctx};

const NETNS_PREFIX: &str = "xbb-";
const PIN_PREFIX: &str = "/sys/fs/bpf/xban-bench-";
pub const SRV_V4: &str = "198.51.100.1";
pub const PEER_V4: &str = "198.51.100.2";
const SRV_V6: &str = "2001:db8:100::1";
const PEER_V6: &str = "2001:db8:100::2";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {program}: is it installed?"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Namespaces and pin directories of benchmark runs whose process is gone
/// (killed with SIGKILL, or the machine lost power mid-run).
pub fn reap_leftovers() {
    let owner_dead = |rest: &str| {
        rest.split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !pid_alive(pid))
    };
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(NETNS_PREFIX).is_some_and(owner_dead) {
                eprintln!("xtask: removing network namespace {name} left by an earlier bench run");
                let _ = run("ip", &["netns", "del", &name]);
            }
        }
    }
    let (dir, prefix) = PIN_PREFIX.rsplit_once('/').expect("absolute prefix");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(prefix).is_some_and(owner_dead) {
                eprintln!(
                    "xtask: removing {} left by an earlier bench run",
                    e.path().display()
                );
                // Unpinning the links detaches XDP; the veth went with its namespace.
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Two namespaces and a veth pair between them.
pub struct Lab {
    pub srv_ns: String,
    pub peer_ns: String,
    pub srv_if: String,
    pub peer_if: String,
}

impl Lab {
    fn new() -> Result<Lab> {
        let id = unique();
        let lab = Lab {
            srv_ns: format!("{NETNS_PREFIX}{id}-s"),
            peer_ns: format!("{NETNS_PREFIX}{id}-p"),
            srv_if: format!("xbs{}", id.replace('-', "")),
            peer_if: format!("xbp{}", id.replace('-', "")),
        };
        lab.build()?; // on error, drop removes what was made
        Ok(lab)
    }

    fn build(&self) -> Result<()> {
        let peer_if = &self.peer_if;
        run("ip", &["netns", "add", &self.srv_ns])?;
        run("ip", &["netns", "add", &self.peer_ns])?;
        run(
            "ip",
            &[
                "link",
                "add",
                &self.srv_if,
                "netns",
                &self.srv_ns,
                "type",
                "veth",
                "peer",
                "name",
                peer_if,
                "netns",
                &self.peer_ns,
            ],
        )?;
        for (ns, ifname, v4, v6) in [
            (&self.srv_ns, &self.srv_if, SRV_V4, SRV_V6),
            (&self.peer_ns, peer_if, PEER_V4, PEER_V6),
        ] {
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", ifname],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    ifname,
                    "nodad",
                ],
            )?;
            run("ip", &["-n", ns, "link", "set", ifname, "up"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }
}

impl Lab {
    /// Lets the peer send from `addr` (an extra address on its veth end)
    /// and the server route replies there, so that its packets pass the
    /// server's reverse-path check whatever the sysctls say.
    pub fn add_peer_v4(&self, addr: std::net::Ipv4Addr) -> Result<()> {
        run(
            "ip",
            &[
                "-n",
                &self.peer_ns,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                &self.peer_if,
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &self.srv_ns,
                "route",
                "replace",
                &format!("{addr}/32"),
                "dev",
                &self.srv_if,
            ],
        )?;
        Ok(())
    }
}

/// Runs `f` on a new thread that has joined network namespace `ns`: the
/// sockets it makes live there.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so the pair.
        let _ = run("ip", &["netns", "del", &self.srv_ns]);
        let _ = run("ip", &["netns", "del", &self.peer_ns]);
    }
}

/// The agent's files: config, the log it follows, state, socket, pins.
pub struct Files {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub pin_dir: PathBuf,
}

/// A running `xban run`.
struct Proc {
    child: Child,
    stderr: PathBuf,
    spawned_at: SystemTime,
}

/// The agent in its lab. Dropping it kills the agent, tears down what it put
/// in the kernel (`xban teardown`), then removes the namespaces.
/// The agent's control socket, for requests from a probe thread.
#[derive(Debug, Clone)]
pub struct Requester(PathBuf);

impl Requester {
    /// One request; the reply's `data`.
    pub fn request(&self, json: &str) -> Result<serde_json::Value> {
        let mut s = UnixStream::connect(&self.0)?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        s.write_all(json.as_bytes())?;
        s.write_all(b"\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
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
        use std::io::Read;
        let started = Instant::now();
        let mut s = UnixStream::connect(&self.0)?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        s.write_all(json.as_bytes())?;
        s.write_all(b"\n")?;
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

/// A reply read as bytes (see [`Requester::timed_raw`]).
pub struct RawReply {
    pub first_byte_ms: f64,
    pub last_byte_ms: f64,
    pub text: String,
}

pub struct Rig {
    xban: PathBuf,
    proc: Option<Proc>,
    starts: u32,
    pub files: Files,
    pub lab: Lab,
}

impl Rig {
    /// `rest` is the config after `[agent]`; `{LOG}` stands for the log path.
    pub fn new(ctx: &Ctx, rest: &str) -> Result<Rig> {
        let lab = Lab::new()?;
        let id = unique();
        let dir = ctx.scratch.join(format!("agent-{id}"));
        std::fs::create_dir_all(&dir)?;
        let files = Files {
            config: dir.join("xban.toml"),
            log: dir.join("auth.log"),
            socket: dir.join("run").join("xban.sock"),
            state: dir.join("state"),
            pin_dir: PathBuf::from(format!("{PIN_PREFIX}{id}")),
            dir,
        };
        let text = format!(
            "[agent]\ninterfaces = [\"{}\"]\nxdp_mode = \"native\"\nbpf_pin_dir = \"{}\"\nstate_dir = \"{}\"\nsocket = \"{}\"\nfilters_dir = \"{}\"\n\n{}",
            lab.srv_if,
            files.pin_dir.display(),
            files.state.display(),
            files.socket.display(),
            files.dir.join("filters").display(),
            rest.replace("{LOG}", &files.log.display().to_string())
        );
        std::fs::write(&files.config, text)?;
        File::create(&files.log)?;
        Ok(Rig {
            xban: ctx.xban.clone(),
            proc: None,
            starts: 0,
            files,
            lab,
        })
    }

    /// `nsenter --net=<srv ns> xban -c <config> ARGS`: the agent and its
    /// commands see only the lab's interfaces (and firewall).
    fn xban_cmd(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.lab.srv_ns))
            .arg(&self.xban)
            .arg("-c")
            .arg(&self.files.config);
        c
    }

    /// The command line that starts the agent, for the report.
    pub fn run_command_text(&self) -> String {
        let mut c = self.xban_cmd();
        c.arg("run");
        crate::cmd::display(&c)
    }

    /// Starts `xban run` (without waiting for it).
    pub fn start(&mut self) -> Result<()> {
        if self.proc.is_some() {
            bail!("the agent is already running");
        }
        self.starts += 1;
        let stderr = self.files.dir.join(format!("agent-{}.log", self.starts));
        let mut cmd = self.xban_cmd();
        // nsenter without --fork execs the agent: the child's pid is the
        // agent's, which is what /proc/PID/status must be read for.
        cmd.arg("run")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr)?);
        let spawned_at = SystemTime::now();
        let child = cmd.spawn().context("spawn xban run")?;
        self.proc = Some(Proc {
            child,
            stderr,
            spawned_at,
        });
        Ok(())
    }

    /// Waits until the control socket answers `status`; returns the time
    /// from spawn.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.proc.as_mut().context("the agent is not running")?;
            if let Some(status) = p.child.try_wait()? {
                let log = std::fs::read_to_string(&p.stderr).unwrap_or_default();
                self.proc = None;
                bail!("xban run exited with {status}:\n{}", tail(&log, 30));
            }
            if self.request("{\"cmd\":\"status\",\"jail\":null}").is_ok() {
                let p = self.proc.as_ref().expect("checked above");
                return Ok(p.spawned_at.elapsed().unwrap_or_default());
            }
            if Instant::now() >= deadline {
                bail!(
                    "xban run did not answer within {timeout:?}:\n{}",
                    tail(&self.agent_log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn start_and_wait(&mut self) -> Result<Duration> {
        self.start()?;
        self.wait_ready(Duration::from_secs(120))
    }

    /// When the running agent was spawned.
    pub fn spawned_at(&self) -> Option<SystemTime> {
        self.proc.as_ref().map(|p| p.spawned_at)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// One request on the control socket (what `xban status --json` etc. send).
    fn request(&self, json: &str) -> Result<serde_json::Value> {
        self.requester().request(json)
    }

    /// Sends control requests from any thread.
    pub fn requester(&self) -> Requester {
        Requester(self.files.socket.clone())
    }

    /// `xban status --json`.
    pub fn status(&self) -> Result<serde_json::Value> {
        self.request("{\"cmd\":\"status\",\"jail\":null}")
    }

    /// A counter of the first jail (`lines`, `failures_total`, `bans_total`).
    pub fn jail_counter(&self, jail: usize, name: &str) -> Result<u64> {
        let s = self.status()?;
        s["jails"][jail]["counters"][name]
            .as_u64()
            .with_context(|| format!("status has no jails[{jail}].counters.{name}: {s}"))
    }

    /// The agent's stderr so far (its tracing log).
    pub fn agent_log(&self) -> String {
        let path = self
            .proc
            .as_ref()
            .map(|p| p.stderr.clone())
            .unwrap_or_else(|| self.files.dir.join(format!("agent-{}.log", self.starts)));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Appends bytes to the followed log in one write, as a syslog daemon
    /// flushing a buffer would.
    pub fn append(&self, bytes: &[u8]) -> Result<()> {
        let mut f = OpenOptions::new().append(true).open(&self.files.log)?;
        f.write_all(bytes)?;
        Ok(())
    }

    /// The log file, opened for appending (for many small timed writes).
    pub fn log_writer(&self) -> Result<File> {
        Ok(OpenOptions::new().append(true).open(&self.files.log)?)
    }

    /// VmRSS and VmHWM of the agent, in KiB.
    /// VmRSS, VmHWM and RssAnon (the agent's own heap: the mmapped fast
    /// path maps count in VmRSS but are kernel memory), in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64, u64)> {
        let pid = self.pid().context("the agent is not running")?;
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

    /// Kernel memory of the two ban tries (`bytes_memlock` in `bpftool map
    /// show`), in bytes, v4 and v6.
    pub fn ban_map_bytes(&self) -> Result<(u64, u64)> {
        let one = |name: &str| -> Result<u64> {
            let path = self.files.pin_dir.join(name);
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

    pub fn bpftool_command_text(&self) -> String {
        format!(
            "bpftool -j map show pinned {}/bans_v4   # bytes_memlock",
            self.files.pin_dir.display()
        )
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut p) = self.proc.take() else {
            return Ok(());
        };
        // SAFETY: kill has no memory-safety preconditions; the child is not
        // reaped yet, so its pid is still ours.
        unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = p.child.try_wait()? {
                if !status.success() {
                    let log = std::fs::read_to_string(&p.stderr).unwrap_or_default();
                    bail!("xban run exited with {status}:\n{}", tail(&log, 30));
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = p.child.kill();
                let _ = p.child.wait();
                bail!("xban run did not stop within 60 s of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `xban teardown`: XDP detached, maps and pins removed; the database stays.
    pub fn teardown(&mut self) -> Result<()> {
        self.stop()?;
        if self.files.pin_dir.exists() {
            let out = self
                .xban_cmd()
                .arg("teardown")
                .stdin(Stdio::null())
                .output()?;
            if !out.status.success() {
                bail!("xban teardown: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if self.files.pin_dir.exists() {
            let _ = self
                .xban_cmd()
                .arg("teardown")
                .stdin(Stdio::null())
                .output();
            let _ = std::fs::remove_dir_all(&self.files.pin_dir);
        }
        // The lab (a field) is dropped after this: namespaces go last.
    }
}
