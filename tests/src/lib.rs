//! Harness for xban's privileged integration tests.
//!
//! A [`Lab`] is two network namespaces joined by a veth pair: `srv`, where the
//! agent runs and attaches XDP, and `atk`, the attacker. Everything it creates
//! has a unique name and is removed on drop (also when a test panics). Tests
//! never touch the machine's own interfaces and only use documentation
//! addresses (198.51.100.0/24, 2001:db8::/32).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod fleet;
pub mod packet;

pub const SRV_V4: &str = "198.51.100.1";
pub const SRV_V6: &str = "2001:db8:100::1";
/// Attacker addresses, all on the attacker's side of the veth.
pub const ATK_V4: &str = "198.51.100.2";
pub const ATK2_V4: &str = "198.51.100.3";
pub const ATK3_V4: &str = "198.51.100.4";
pub const ATK_V6: &str = "2001:db8:100::2";

pub(crate) static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fail loudly (never skip) when the tests cannot do what they claim.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the integration tests load XDP programs and create network namespaces: run them as root (cargo xtask test)"
    );
}

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

pub(crate) fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("run {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Two namespaces and a veth pair.
pub struct Lab {
    pub srv_ns: String,
    pub atk_ns: String,
    /// The server's end of the veth (XDP attaches here).
    pub srv_if: String,
    pub atk_if: String,
}

impl Lab {
    pub fn new() -> Result<Lab> {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let lab = Lab {
            srv_ns: format!("xbt-{id}-srv"),
            atk_ns: format!("xbt-{id}-atk"),
            srv_if: format!("xs{id}"),
            atk_if: format!("xa{id}"),
        };
        lab.build().inspect_err(|_| drop_lab(&lab))?;
        Ok(lab)
    }

    fn build(&self) -> Result<()> {
        run("ip", &["netns", "add", &self.srv_ns])?;
        run("ip", &["netns", "add", &self.atk_ns])?;
        self.build_veth()
    }

    /// Delete the veth pair and create it again, addresses and all: the
    /// same names, new interface indexes (what XDP links are bound to).
    pub fn recreate_veth(&self) -> Result<()> {
        run("ip", &["-n", &self.srv_ns, "link", "del", &self.srv_if])?;
        self.build_veth()
    }

    fn build_veth(&self) -> Result<()> {
        let (s, a) = (&self.srv_ns, &self.atk_ns);
        run(
            "ip",
            &[
                "link",
                "add",
                &self.srv_if,
                "netns",
                s,
                "type",
                "veth",
                "peer",
                "name",
                &self.atk_if,
                "netns",
                a,
            ],
        )?;
        for (ns, ifname, v4, v6s) in [
            (s, &self.srv_if, vec![SRV_V4], vec![SRV_V6]),
            (
                a,
                &self.atk_if,
                vec![ATK_V4, ATK2_V4, ATK3_V4],
                vec![ATK_V6],
            ),
        ] {
            for addr in v4 {
                run(
                    "ip",
                    &[
                        "-n",
                        ns,
                        "addr",
                        "add",
                        &format!("{addr}/24"),
                        "dev",
                        ifname,
                    ],
                )?;
            }
            for addr in v6s {
                run(
                    "ip",
                    &[
                        "-n",
                        ns,
                        "addr",
                        "add",
                        &format!("{addr}/64"),
                        "dev",
                        ifname,
                        "nodad",
                    ],
                )?;
            }
            run("ip", &["-n", ns, "link", "set", ifname, "up"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Run `f` with this thread in the namespace; sockets made there stay there.
    pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(format!("/run/netns/{ns}")).expect("open netns");
                    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("setns");
                    f()
                })
                .join()
                .expect("namespace thread")
        })
    }

    /// Does a UDP datagram from `src` reach the server at `dst`? Tries a few
    /// times (the first packet may wait for neighbour discovery).
    pub fn udp_reaches(&self, src: &str, dst: &str) -> bool {
        let dst_ip: IpAddr = dst.parse().unwrap();
        let server = Self::in_ns(&self.srv_ns, || {
            UdpSocket::bind(SocketAddr::new(dst_ip, 0)).expect("bind server udp")
        });
        server
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let to = server.local_addr().unwrap();
        let src_ip: IpAddr = src.parse().unwrap();
        let client = Self::in_ns(&self.atk_ns, || {
            UdpSocket::bind(SocketAddr::new(src_ip, 0)).expect("bind client udp")
        });
        let mut buf = [0u8; 64];
        for attempt in 0..3 {
            let msg = format!("probe-{attempt}");
            client.send_to(msg.as_bytes(), to).unwrap();
            if let Ok((n, from)) = server.recv_from(&mut buf) {
                if from.ip() == src_ip && &buf[..n] == msg.as_bytes() {
                    return true;
                }
            }
        }
        false
    }

    /// A TCP connection attempt from `src` to a fresh listener at `dst`.
    fn tcp_attempt(
        &self,
        src: &str,
        dst: &str,
    ) -> (TcpListener, std::io::Result<std::net::TcpStream>) {
        let dst_ip: IpAddr = dst.parse().unwrap();
        let listener = Self::in_ns(&self.srv_ns, || {
            TcpListener::bind(SocketAddr::new(dst_ip, 0)).expect("bind server tcp")
        });
        let to = listener.local_addr().unwrap();
        let src_ip: IpAddr = src.parse().unwrap();
        let sock = Self::in_ns(&self.atk_ns, || {
            let domain = if src_ip.is_ipv4() {
                socket2::Domain::IPV4
            } else {
                socket2::Domain::IPV6
            };
            let s =
                socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
                    .unwrap();
            s.bind(&SocketAddr::new(src_ip, 0).into()).unwrap();
            s
        });
        let result = sock
            .connect_timeout(&to.into(), Duration::from_millis(1500))
            .map(|()| sock.into());
        (listener, result)
    }

    /// Does a TCP connection from `src` to the server at `dst` complete, and
    /// carry data from the right peer?
    pub fn tcp_connects(&self, src: &str, dst: &str) -> bool {
        let (listener, result) = self.tcp_attempt(src, dst);
        let Ok(mut stream) = result else {
            return false;
        };
        let _ = stream.write_all(b"hello");
        let (mut accepted, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        accepted
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        peer.ip() == src.parse::<IpAddr>().unwrap()
            && accepted.read_exact(&mut buf).is_ok()
            && &buf == b"hello"
    }

    /// Connect over TCP from `src` to a listener at `dst`: Ok, or the error
    /// kind (ConnectionRefused for a reset, TimedOut for silence).
    pub fn tcp_connect_result(
        &self,
        src: &str,
        dst: &str,
    ) -> std::result::Result<(), std::io::ErrorKind> {
        self.tcp_attempt(src, dst).1.map(drop).map_err(|e| e.kind())
    }

    /// Run a command in the server's namespace; returns stdout.
    pub fn in_srv(&self, cmd: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.srv_ns.as_str(), cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// The XDP program attached to the server's interface, if any (`ip link`).
    pub fn xdp_attached(&self) -> bool {
        run(
            "ip",
            &[
                "-n",
                &self.srv_ns,
                "-d",
                "link",
                "show",
                "dev",
                &self.srv_if,
            ],
        )
        .map(|out| out.contains("prog/xdp"))
        .unwrap_or(false)
    }
}

fn drop_lab(lab: &Lab) {
    // Deleting a namespace deletes the veth pair with it.
    let _ = Command::new("ip")
        .args(["netns", "del", &lab.srv_ns])
        .output();
    let _ = Command::new("ip")
        .args(["netns", "del", &lab.atk_ns])
        .output();
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop_lab(self);
    }
}

/// Where a test's agent keeps everything: config, log, state, socket, pins.
pub struct AgentDir {
    pub dir: tempfile::TempDir,
    pub pin_dir: PathBuf,
    /// The lab's server namespace: `xban` commands run there, so teardown's
    /// firewall clean-up never touches the machine's own namespace.
    netns: std::cell::RefCell<Option<String>>,
}

impl AgentDir {
    pub fn new() -> Result<AgentDir> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Ok(AgentDir {
            dir: tempfile::Builder::new().prefix("xban-test-").tempdir()?,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/xban-test-{}-{n}", std::process::id())),
            netns: std::cell::RefCell::new(None),
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

    /// Write a config for `lab`: the `[agent]` section is filled in, `rest`
    /// holds `[defaults]`/`[jails]` (use `{LOG}` for the log path).
    pub fn write_config(&self, lab: &Lab, rest: &str) -> Result<()> {
        self.write_config_with_agent(lab, "", rest)
    }

    /// As [`write_config`](Self::write_config), with more `[agent]` keys.
    pub fn write_config_with_agent(&self, lab: &Lab, agent_keys: &str, rest: &str) -> Result<()> {
        *self.netns.borrow_mut() = Some(lab.srv_ns.clone());
        let text = format!(
            "[agent]\ninterfaces = [\"{}\"]\nxdp_mode = \"native\"\nbpf_pin_dir = \"{}\"\nstate_dir = \"{}\"\nsocket = \"{}\"\nfilters_dir = \"{}\"\n{agent_keys}\n{}",
            lab.srv_if,
            self.pin_dir.display(),
            self.path("state").display(),
            self.path("xban.sock").display(),
            self.path("filters").display(),
            rest.replace("{LOG}", &self.log_path().display().to_string())
        );
        std::fs::write(self.config_path(), text)?;
        if !self.log_path().exists() {
            std::fs::write(self.log_path(), "")?;
        }
        Ok(())
    }

    /// Append lines to the log, as a service would.
    pub fn append_log(&self, lines: &[String]) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log_path())?;
        for l in lines {
            writeln!(f, "{l}")?;
        }
        f.flush()?;
        Ok(())
    }

    /// Run an `xban` command against this agent's config (from the root
    /// namespace: the socket and pins are files, reachable from anywhere).
    pub fn xban(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(self.xban_command().args(args).output()?)
    }

    /// Start an `xban` command without waiting for it (stdout piped).
    pub fn xban_spawn(&self, args: &[&str]) -> Result<std::process::Child> {
        Ok(self
            .xban_command()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?)
    }

    fn xban_command(&self) -> Command {
        let mut cmd = match self.netns.borrow().as_ref() {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(xban_bin());
                c
            }
            None => Command::new(xban_bin()),
        };
        cmd.arg("-c").arg(self.config_path());
        cmd
    }

    /// Run an `xban` command that must succeed; returns stdout.
    pub fn xban_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.xban(args)?;
        if !out.status.success() {
            bail!(
                "xban {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `xban banned --json`.
    pub fn banned(&self) -> Result<Vec<serde_json::Value>> {
        Ok(serde_json::from_str(&self.xban_ok(&["banned", "--json"])?)?)
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
        Ok(serde_json::from_str(&self.xban_ok(&["stats", "--json"])?)?)
    }
}

impl Drop for AgentDir {
    fn drop(&mut self) {
        // Whatever a test left attached or pinned goes with it.
        if self.pin_dir.exists() {
            let _ = self.xban_command().arg("teardown").output();
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
    }
}

/// A running agent process in the lab's server namespace.
pub struct AgentProcess {
    child: Option<Child>,
    pub stderr_path: PathBuf,
}

impl AgentProcess {
    /// Start `xban run` in the server namespace and wait until it answers.
    pub fn start(lab: &Lab, dir: &AgentDir) -> Result<AgentProcess> {
        Self::start_with(lab, dir, &[])
    }

    /// Start with extra arguments to `xban run` (e.g. `--dry-run`).
    pub fn start_with(lab: &Lab, dir: &AgentDir, run_args: &[&str]) -> Result<AgentProcess> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let stderr_path = dir.path(&format!("agent-{n}.log"));
        // nsenter --net only: the agent shares our mount namespace, so its
        // bpffs pins are the ones we (and bpftool) see.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.srv_ns))
            .arg(xban_bin())
            .arg("-c")
            .arg(dir.config_path())
            .arg("run")
            .args(run_args)
            .env("RUST_LOG", "info,xban=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr_path)?)
            .spawn()
            .context("spawn xban run")?;
        let mut agent = AgentProcess {
            child: Some(child),
            stderr_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = agent.child.as_mut().unwrap().try_wait()? {
                bail!("xban run exited with {status}:\n{}", agent.log());
            }
            if dir.xban(&["status", "--json"])?.status.success() {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!("xban run did not answer within 30 s:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        let child = self.child.take().unwrap();
        // If the signal fails, reap() kills the process after the timeout.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.reap(child, Duration::from_secs(15))
    }

    /// Wait for the process to exit by itself.
    pub fn wait_exit(mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let child = self.child.take().unwrap();
        self.reap(child, timeout)
    }

    /// Wait up to `timeout`, then kill: never leaves a process behind.
    fn reap(&self, mut child: Child, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("xban did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
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

/// An sshd-style failure line for `addr`, timestamped now (syslog format).
pub fn sshd_failure(addr: &str, n: usize) -> String {
    let now = chrono::Local::now();
    format!(
        "{} lab sshd[{}]: Failed password for invalid user admin{n} from {addr} port {} ssh2",
        now.format("%b %e %H:%M:%S"),
        4000 + n,
        40000 + n
    )
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}
