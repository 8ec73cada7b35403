//! Deployment: the systemd unit (verified offline, its sandbox reproduced
//! around a real agent), the default config and the example jails, `cargo
//! xtask install/uninstall` under a temporary root, and `cargo xtask demo`
//! (to the end, and interrupted).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use xban_tests::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn deploy(name: &str) -> PathBuf {
    workspace().join("deploy").join(name)
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `program` without the variables cargo set for this test binary, so that
/// a nested cargo builds (or finds fresh) xtask exactly as from a shell.
/// CARGO_TARGET_DIR is kept: the nested cargo reuses the artifacts of the
/// run that started these tests.
fn scrubbed(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let set_by_cargo =
            (key.starts_with("CARGO_") && key != "CARGO_TARGET_DIR" && key != "CARGO_HOME")
                || key == "CARGO"
                || key.starts_with("RUSTC")
                || key.starts_with("RUSTUP_TOOLCHAIN")
                || key == "RUSTFLAGS"
                || key == "RUSTDOCFLAGS";
        if set_by_cargo {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(workspace());
    cmd
}

/// `cargo xtask ARGS`, as an operator types it.
fn cargo_xtask(args: &[&str]) -> Command {
    let mut cmd = scrubbed("cargo");
    cmd.arg("xtask").args(args);
    cmd
}

// ---- the unit ---------------------------------------------------------------

/// `[Service]` (and other) settings of a unit file: key → values in order.
struct Unit(BTreeMap<String, Vec<String>>);

impl Unit {
    fn load(path: &Path) -> Unit {
        let text = std::fs::read_to_string(path).unwrap();
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
                continue;
            }
            let (k, v) = line.split_once('=').expect("key=value");
            map.entry(k.trim().into())
                .or_default()
                .push(v.trim().into());
        }
        Unit(map)
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0.get(key).cloned().unwrap_or_default()
    }

    /// Space-separated values of every `key=` line, in order.
    fn words(&self, key: &str) -> Vec<String> {
        self.all(key)
            .iter()
            .flat_map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
            .collect()
    }

    fn one(&self, key: &str) -> Option<String> {
        let v = self.all(key);
        assert!(v.len() <= 1, "{key} is set {} times", v.len());
        v.into_iter().next()
    }
}

/// The unit with ExecStart and ExecReload pointing at `binary`: `systemd-analyze verify`
/// insists that the programs it names exist and are executable.
fn unit_for(binary: &Path, unit: &Path, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(unit).unwrap();
    assert!(text.contains("ExecStart=/usr/local/sbin/xban "), "{text}");
    assert!(text.contains("ExecReload=/usr/local/sbin/xban "), "{text}");
    let copy = dir.join("xban.service");
    std::fs::write(
        &copy,
        text.replace("=/usr/local/sbin/xban ", &format!("={} ", binary.display())),
    )
    .unwrap();
    copy
}

fn verify(unit: &Path) -> Output {
    Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .expect("systemd-analyze (package systemd) is installed")
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for(&xban_bin(), &deploy("xban.service"), dir.path());
    let out = verify(&unit);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        text(&out)
    );

    // The check has teeth offline (no systemd running here): a unit naming
    // a missing program, or with a misspelt key, is reported.
    let broken = dir.path().join("broken.service");
    let good = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(
        &broken,
        good.replace(&xban_bin().display().to_string(), "/nonexistent/xban"),
    )
    .unwrap();
    assert!(!verify(&broken).status.success());
    std::fs::write(&broken, good.replace("NoNewPrivileges=", "NoNewPrivilege=")).unwrap();
    let out = verify(&broken);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NoNewPrivilege"),
        "{}",
        text(&out)
    );
}

/// The figure README.md gives, and the command it says produced it.
fn readme_exposure() -> f64 {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    assert!(
        readme.contains("systemd-analyze security --offline=true"),
        "README.md shows how the exposure was measured"
    );
    let line = readme
        .lines()
        .find(|l| l.contains("Overall exposure level for xban.service:"))
        .expect("README.md quotes systemd-analyze's exposure line");
    line.split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn unit_security_exposure_is_the_one_in_the_readme() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for(&xban_bin(), &deploy("xban.service"), dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for xban.service:"))
        .unwrap_or_else(|| panic!("{}", text(&out)));
    let measured: f64 = line
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        measured,
        readme_exposure(),
        "README.md's exposure figure is stale; systemd-analyze says:\n{line}"
    );
    // What the unit comments promise about the sandbox.
    let u = Unit::load(&deploy("xban.service"));
    let caps = u.words("CapabilityBoundingSet");
    assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"), "{caps:?}");
    assert_ne!(u.one("ProtectKernelTunables").as_deref(), Some("yes"));
    assert_eq!(u.one("Type").as_deref(), Some("notify"));
    assert_eq!(u.one("NoNewPrivileges").as_deref(), Some("yes"));
}

// ---- the sandbox, reproduced ------------------------------------------------

/// `systemd-analyze syscall-filter`: every group with its members expanded.
fn syscall_groups() -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut raw: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_string());
            raw.entry(line.trim().into()).or_default();
        } else if let (Some(g), Some(item)) = (&current, line.strip_prefix("    ")) {
            if !item.starts_with('#') {
                raw.get_mut(g).unwrap().push(item.trim().into());
            }
        }
    }
    fn expand(g: &str, raw: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
        for item in raw.get(g).unwrap_or_else(|| panic!("unknown group {g}")) {
            if item.starts_with('@') {
                expand(item, raw, out);
            } else {
                out.insert(item.clone());
            }
        }
    }
    raw.keys()
        .map(|g| {
            let mut set = BTreeSet::new();
            expand(g, &raw, &mut set);
            (g.clone(), set)
        })
        .collect()
}

/// The system calls the unit's SystemCallFilter= lines allow: the first
/// line is an allow list, `~` lines remove from it, later plain lines add.
fn allowed_syscalls(unit: &Unit) -> BTreeSet<String> {
    let groups = syscall_groups();
    let names = |items: &str| -> BTreeSet<String> {
        items
            .split_whitespace()
            .flat_map(|i| match groups.get(i) {
                Some(set) => set.clone(),
                None if i.starts_with('@') => panic!("unknown syscall group {i}"),
                None => BTreeSet::from([i.to_string()]),
            })
            .collect()
    };
    let lines = unit.all("SystemCallFilter");
    assert!(
        lines.first().is_some_and(|l| !l.starts_with('~')),
        "the filter starts with an allow list: {lines:?}"
    );
    let mut allowed = BTreeSet::new();
    for line in lines {
        match line.strip_prefix('~') {
            Some(deny) => allowed = &allowed - &names(deny),
            None => allowed.extend(names(&line)),
        }
    }
    allowed
}

/// `strace -c` output: the system calls made (the rows of its table, which
/// sits between two dashed lines).
fn traced_syscalls(summary: &str) -> BTreeSet<String> {
    summary
        .lines()
        .skip_while(|l| !l.starts_with("------"))
        .skip(1)
        .take_while(|l| !l.starts_with("------"))
        .filter_map(|l| l.split_whitespace().last().map(String::from))
        .collect()
}

/// A shell script that rebuilds the unit's filesystem view in a private
/// mount namespace (run under `unshare --mount`), then execs the rest of
/// its arguments: ProtectSystem=strict makes every mount read-only but /dev,
/// /proc and /sys; ReadOnlyPaths= adds its paths; ReadWritePaths= and the
/// state and runtime directories (here `writable`, the test's directory)
/// stay writable. It checks that it worked before going on.
fn sandbox_script(unit: &Unit, writable: &Path) -> String {
    assert_eq!(unit.one("ProtectSystem").as_deref(), Some("strict"));
    let rw: Vec<String> = unit
        .words("ReadWritePaths")
        .into_iter()
        .chain([writable.display().to_string()])
        .collect();
    let ro = unit.words("ReadOnlyPaths");
    let patterns = |paths: &[String]| {
        paths
            .iter()
            .map(|p| format!("{p}|{p}/*"))
            .collect::<Vec<_>>()
            .join("|")
    };
    format!(
        r#"set -eu
mount --make-rslave /
# Paths with their own rules become mounts of their own (with their submounts).
for p in {rw} {ro}; do mount --rbind "$p" "$p"; done
awk '{{print $5}}' /proc/self/mountinfo | sort -u | while read -r mp; do
  case "$mp" in {rw_patterns}) continue ;; esac
  # ProtectSystem=strict leaves the API filesystems alone ...
  case "$mp" in {ro_patterns}) ;; /dev|/dev/*|/proc|/proc/*|/sys|/sys/*) continue ;; esac
  # ... and makes everything else read-only, as ReadOnlyPaths= does its paths.
  mount -o remount,bind,ro "$mp" 2>/dev/null || echo "sandbox: $mp stays writable" >&2
done
for p in /etc/xban-sandbox-probe /var/lib/xban-sandbox-probe /run/xban-sandbox-probe /usr/xban-sandbox-probe; do
  if touch "$p" 2>/dev/null; then rm -f "$p"; echo "sandbox: $p is writable" >&2; exit 97; fi
done
# The topmost mount at a path decides.
top_rw() {{ mount | awk -v p="$1" '$3 == p {{ m = $6 }} END {{ exit !(m ~ /^\(rw/) }}'; }}
for p in {ro}; do
  if top_rw "$p"; then echo "sandbox: $p is writable" >&2; exit 97; fi
done
for p in {rw}; do
  top_rw "$p" || {{ echo "sandbox: $p is not writable" >&2; exit 98; }}
done
exec "$@"
"#,
        rw = rw.join(" "),
        ro = ro.join(" "),
        rw_patterns = patterns(&rw),
        ro_patterns = patterns(&ro),
    )
}

/// The agent as the unit runs it: its capability bounding set and
/// NoNewPrivileges (setpriv), its filesystem view (a private mount
/// namespace), and every system call it and its children make counted
/// (strace) to hold against the unit's SystemCallFilter.
#[test]
fn agent_works_inside_the_units_sandbox() {
    let unit = Unit::load(&deploy("xban.service"));
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let ident = format!("xbt-sandbox-{}", std::process::id());
    dir.write_config(
        &lab,
        &format!(
            r#"
[tarpit]
engine = "iptables"
fallback = "REJECT --reject-with tcp-reset"

[jails.sshd]
filter = "sshd"
logpath = ["{{LOG}}"]
maxretry = 2

# The journal source (Debian 12's default for sshd) runs journalctl.
[jails.journal]
backend = "systemd"
journalmatch = ["SYSLOG_IDENTIFIER={ident}"]
failregex = ['auth failure from <HOST>$']
"#
        ),
    )
    .unwrap();

    let caps: Vec<String> = unit
        .words("CapabilityBoundingSet")
        .iter()
        .map(|c| format!("+{}", c.strip_prefix("CAP_").unwrap().to_lowercase()))
        .collect();
    assert_eq!(unit.one("NoNewPrivileges").as_deref(), Some("yes"));
    let trace = dir.path("syscalls.txt");
    let stderr = dir.path("agent-sandbox.log");
    let mut agent = Command::new("unshare")
        .args(["--mount", "--propagation", "slave", "sh", "-c"])
        .arg(sandbox_script(&unit, dir.dir.path()))
        .arg("sandbox")
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.srv_ns))
        .arg("setpriv")
        .arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .args(["--inh-caps=-all", "--no-new-privs"])
        .args(["strace", "-f", "-c", "-o"])
        .arg(&trace)
        .arg(xban_bin())
        .arg("-c")
        .arg(dir.config_path())
        .arg("run")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let _reaper = KillOnDrop(Some(agent.id()));
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(60), || {
            if let Ok(Some(status)) = agent.try_wait() {
                panic!("the sandboxed agent exited ({status}):\n{}", log());
            }
            dir.xban(&["status", "--json"]).unwrap().status.success()
        }),
        "the sandboxed agent did not answer:\n{}",
        log()
    );
    let status: serde_json::Value =
        serde_json::from_str(&dir.xban_ok(&["status", "--json"]).unwrap()).unwrap();
    assert_eq!(
        status["tarpit"]["active"],
        true,
        "iptables and ipset work with the unit's capabilities: {status}\n{}",
        log()
    );

    // A jail bans from its log file, XDP drops.
    dir.append_log(&[sshd_failure(ATK_V4, 0), sshd_failure(ATK_V4, 1)])
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || dir
            .banned_addresses()
            .unwrap()
            .contains(&ATK_V4.to_string())),
        "{}",
        log()
    );
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4));

    // The journal jail's journalctl runs inside the sandbox too (it follows
    // the journal files whether or not a journald is writing them).
    let following = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.starts_with("journalctl\0")
                && cmdline.contains("--follow")
                && cmdline.contains(&ident)
        })
    };
    assert!(
        wait_for(Duration::from_secs(20), following),
        "no journalctl following SYSLOG_IDENTIFIER={ident}:\n{}",
        log()
    );
    for trouble in ["journalctl could not", "journalctl exited"] {
        assert!(!log().contains(trouble), "{}", log());
    }

    // The tarpit class: the agent adds to the ipset, iptables resets.
    dir.xban_ok(&["ban", ATK3_V4, "--class", "tarpit"]).unwrap();
    assert_eq!(
        lab.tcp_connect_result(ATK3_V4, SRV_V4),
        Err(ErrorKind::ConnectionRefused),
        "{}",
        log()
    );
    dir.xban_ok(&["unban", ATK3_V4]).unwrap();
    assert_eq!(lab.tcp_connect_result(ATK3_V4, SRV_V4), Ok(()));

    // Teardown, done by the sandboxed agent itself.
    dir.xban_ok(&["teardown"]).unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || matches!(
            agent.try_wait(),
            Ok(Some(_))
        )),
        "{}",
        log()
    );
    assert!(agent.wait().unwrap().success(), "{}", log());
    assert!(!dir.pin_dir.exists());
    assert!(!lab.xdp_attached());
    let rules = lab.in_srv("iptables", &["-S"]).unwrap();
    assert!(!rules.contains("XBAN-TARPIT"), "{rules}");

    // Every system call made, by the agent and by iptables, ipset and
    // journalctl, passes the unit's filter.
    let summary = std::fs::read_to_string(&trace).unwrap();
    let used = traced_syscalls(&summary);
    assert!(
        used.contains("bpf") && used.contains("inotify_add_watch"),
        "{summary}"
    );
    let allowed = allowed_syscalls(&unit);
    let denied: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        denied.is_empty(),
        "SystemCallFilter= would refuse {denied:?}; strace -c said:\n{summary}\nthe agent's log:\n{}",
        log()
    );
}

/// Kills a process (by id) that a failed test leaves running, with its
/// children (strace's tracee, the agent).
struct KillOnDrop(Option<u32>);

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            (ppid.parse::<u32>().ok()? == pid).then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            for p in children_of(pid).into_iter().chain([pid]) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The unit grants no capability the agent could do without: without any
/// one of them, it either does not start or cannot steer the tarpit class.
#[test]
fn every_capability_in_the_unit_is_needed() {
    let unit = Unit::load(&deploy("xban.service"));
    let caps = unit.words("CapabilityBoundingSet");
    assert!(!caps.is_empty());
    for missing in &caps {
        let lab = Lab::new().unwrap();
        let dir = AgentDir::new().unwrap();
        dir.write_config(
            &lab,
            "[tarpit]\nengine = \"iptables\"\nfallback = \"REJECT --reject-with tcp-reset\"\n\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n",
        )
        .unwrap();
        let kept: Vec<String> = caps
            .iter()
            .filter(|c| *c != missing)
            .map(|c| format!("+{}", c.strip_prefix("CAP_").unwrap().to_lowercase()))
            .collect();
        let stderr = dir.path("agent.log");
        let mut agent = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.srv_ns))
            .arg("setpriv")
            .arg(format!("--bounding-set=-all,{}", kept.join(",")))
            .args(["--inh-caps=-all", "--no-new-privs"])
            .arg(xban_bin())
            .arg("-c")
            .arg(dir.config_path())
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let _reaper = KillOnDrop(Some(agent.id()));
        let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
        let mut exited = None;
        let answered = wait_for(Duration::from_secs(30), || {
            if let Ok(Some(status)) = agent.try_wait() {
                exited = Some(status);
                return true;
            }
            dir.xban(&["status", "--json"]).unwrap().status.success()
        });
        assert!(
            answered,
            "without {missing}: neither up nor down:\n{}",
            log()
        );
        let broken = match exited {
            Some(status) => !status.success(),
            None => {
                let status: serde_json::Value =
                    serde_json::from_str(&dir.xban_ok(&["status", "--json"]).unwrap()).unwrap();
                status["tarpit"]["active"] != true
            }
        };
        assert!(
            broken,
            "the agent does all its work without {missing}:\n{}",
            log()
        );
        // Whatever it managed to pin goes with the AgentDir (teardown).
        if exited.is_none() {
            dir.xban_ok(&["teardown"]).unwrap();
            let _ = agent.wait();
        }
    }
}

// ---- the configs --------------------------------------------------------------

/// deploy/xban.toml with its filters_dir replaced (the test must not read
/// /etc/xban), plus `extra`.
fn default_config_with(filters_dir: &Path, extra: &str) -> String {
    let text = std::fs::read_to_string(deploy("xban.toml")).unwrap();
    let line = "filters_dir = \"/etc/xban/filters\"";
    assert!(text.contains(line), "deploy/xban.toml sets {line}");
    format!(
        "{}\n{extra}",
        text.replace(
            line,
            &format!("filters_dir = \"{}\"", filters_dir.display())
        )
    )
}

fn check(config: &Path) -> Output {
    Command::new(xban_bin())
        .arg("-c")
        .arg(config)
        .arg("check")
        .output()
        .unwrap()
}

/// `check --config-only`: the file, not this machine (the examples name
/// log directories of services this machine need not have).
fn check_file(config: &Path) -> Output {
    Command::new(xban_bin())
        .arg("-c")
        .arg(config)
        .args(["check", "--config-only"])
        .output()
        .unwrap()
}

/// A jail of an example file: its name, filter and log files.
#[derive(Debug)]
struct ExampleJail {
    name: String,
    filter: String,
    logpath: Vec<String>,
}

/// Our own example files are simple enough to read line by line.
fn example_jails(text: &str) -> Vec<ExampleJail> {
    let mut jails: Vec<ExampleJail> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("[jails.")
            .and_then(|l| l.strip_suffix(']'))
        {
            jails.push(ExampleJail {
                name: name.into(),
                filter: String::new(),
                logpath: Vec::new(),
            });
        } else if let (Some(j), Some((k, v))) = (jails.last_mut(), line.split_once(" = ")) {
            let strings = v
                .split('"')
                .skip(1)
                .step_by(2)
                .map(String::from)
                .collect::<Vec<_>>();
            match k {
                "filter" => j.filter = strings[0].clone(),
                "logpath" => j.logpath = strings,
                _ => {}
            }
        }
    }
    jails
}

/// Lines as Debian's packages write them to each log file, one attack each
/// (from 203.0.113.7).
const DEBIAN_LOG_LINES: &[(&str, &str)] = &[
    ("/var/log/nginx/error.log", r#"2026/11/21 05:28:31 [error] 1201#1201: *4411 user "bob": password mismatch, client: 203.0.113.7, server: example.org, request: "GET /admin/ HTTP/1.1", host: "example.org""#),
    ("/var/log/nginx/error.log", r#"2026/11/21 05:28:31 [error] 1201#1201: *4412 limiting requests, excess: 20.500 by zone "login", client: 203.0.113.7, server: example.org, request: "POST /login HTTP/1.1", host: "example.org""#),
    ("/var/log/nginx/error.log", r#"2026/11/21 05:28:31 [error] 1201#1201: *4413 open() "/usr/share/nginx/html/phpmyadmin/index.php" failed (2: No such file or directory), client: 203.0.113.7, server: example.org, request: "GET /phpmyadmin/index.php HTTP/1.1", host: "example.org""#),
    ("/var/log/nginx/access.log", r#"203.0.113.7 - - [21/Nov/2026:05:28:31 +0000] "GET /wp-login.php HTTP/1.1" 404 153 "-" "Mozilla/5.0""#),
    ("/var/log/apache2/error.log", "[Sat Nov 21 05:28:31.266605 2026] [auth_basic:error] [pid 17512:tid 140123079128832] [client 203.0.113.7:51386] AH01618: user bob not found: /private/"),
    ("/var/log/apache2/error.log", "[Sat Nov 21 05:28:31.266605 2026] [cgi:error] [pid 17512:tid 140123079128832] [client 203.0.113.7:51387] AH02811: script not found or unable to stat: /usr/lib/cgi-bin/php"),
    ("/var/log/apache2/error.log", "[Sat Nov 21 05:28:31.266605 2026] [core:error] [pid 17512:tid 140123079128832] [client 203.0.113.7:51388] AH00126: Invalid URI in request GET /../../etc/passwd HTTP/1.1"),
    ("/var/log/mail.log", "Nov 21 05:28:31 mx postfix/smtpd[14398]: warning: unknown[203.0.113.7]: SASL LOGIN authentication failed: UGFzc3dvcmQ6"),
    ("/var/log/mail.log", "Nov 21 05:28:31 mx dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<bob>, method=PLAIN, rip=203.0.113.7, lip=198.51.100.1, TLS, session=<Lsz0Oo7WXti3b7xe>"),
    ("/var/log/auth.log", "Nov 21 05:28:31 host sshd[4242]: Failed password for invalid user admin from 203.0.113.7 port 40000 ssh2"),
];

/// Whether `filter` finds 203.0.113.7 in `line` (`xban regex`, no root).
fn filter_catches(config: &Path, filter: &str, line: &str) -> bool {
    let out = Command::new(xban_bin())
        .arg("-c")
        .arg(config)
        .args(["regex", line, filter, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["lines_matched"] == 1 && report["hosts"][0]["host"] == "203.0.113.7"
}

#[test]
fn default_config_and_examples_pass_check_and_read_the_right_logs() {
    let dir = tempfile::tempdir().unwrap();
    let filters = dir.path().join("filters");
    std::fs::create_dir(&filters).unwrap();

    let config = dir.path().join("xban.toml");
    std::fs::write(&config, default_config_with(&filters, "")).unwrap();
    let out = check(&config);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok (1 jails: sshd)"),
        "{}",
        text(&out)
    );

    let mut examples: Vec<PathBuf> = std::fs::read_dir(deploy("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 3, "{examples:?}");
    let mut all = String::new();
    let mut jails = example_jails(&std::fs::read_to_string(deploy("xban.toml")).unwrap());
    for example in &examples {
        let fragment = std::fs::read_to_string(example).unwrap();
        // Each fragment is appended to the default config, as its header says.
        std::fs::write(&config, default_config_with(&filters, &fragment)).unwrap();
        let out = check_file(&config);
        assert!(
            out.status.success(),
            "{}: {}",
            example.display(),
            text(&out)
        );
        let found = example_jails(&fragment);
        assert!(!found.is_empty(), "{}", example.display());
        for j in &found {
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&j.name),
                "{}: jail {} missing from `check`: {}",
                example.display(),
                j.name,
                text(&out)
            );
        }
        all.push_str(&fragment);
        jails.extend(found);
    }
    // All together too: no jail name is used twice.
    std::fs::write(&config, default_config_with(&filters, &all)).unwrap();
    let out = check_file(&config);
    assert!(out.status.success(), "{}", text(&out));

    // Each jail reads files in which its filter finds attacks.
    for j in &jails {
        assert!(!j.logpath.is_empty(), "{j:?}");
        for path in &j.logpath {
            let lines: Vec<&str> = DEBIAN_LOG_LINES
                .iter()
                .filter(|(p, _)| p == path)
                .map(|(_, l)| *l)
                .collect();
            assert!(!lines.is_empty(), "no sample line for {path} ({j:?})");
            assert!(
                lines.iter().any(|l| filter_catches(&config, &j.filter, l)),
                "jail {}: filter {} finds nothing in a Debian {path} line",
                j.name,
                j.filter
            );
        }
    }
}

// ---- install and uninstall ------------------------------------------------------

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn xtask_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process killed (and reaped) if the test fails first.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn install_and_uninstall_under_a_root() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let bin = xban_bin();
    let root_arg = r.to_str().unwrap();
    let bin_arg = bin.to_str().unwrap();
    let out = xtask_ok(&mut cargo_xtask(&[
        "install", "--root", root_arg, "--binary", bin_arg,
    ]));

    let installed = r.join("usr/local/sbin/xban");
    let unit = r.join("etc/systemd/system/xban.service");
    let config = r.join("etc/xban/xban.toml");
    let filters = r.join("etc/xban/filters");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&bin).unwrap()
    );
    assert_eq!(mode(&installed), 0o755);
    assert_eq!(
        std::fs::read(&unit).unwrap(),
        std::fs::read(deploy("xban.service")).unwrap()
    );
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(
        std::fs::read(&config).unwrap(),
        std::fs::read(deploy("xban.toml")).unwrap()
    );
    assert_eq!(mode(&config), 0o600);
    assert!(filters.is_dir() && std::fs::read_dir(&filters).unwrap().next().is_none());
    assert!(out.contains("systemd was not told"), "{out}");

    // The installed unit names the installed binary, and verifies.
    let vdir = tempfile::tempdir().unwrap();
    let out = verify(&unit_for(&installed, &unit, vdir.path()));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        text(&out)
    );

    // The operator's config is never overwritten; the new default goes beside it.
    let lab = Lab::new().unwrap();
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/xban-test-install-{}",
        std::process::id()
    ));
    let own = format!(
        "[agent]\ninterfaces = [\"{}\"]\nxdp_mode = \"native\"\nbpf_pin_dir = \"{}\"\nstate_dir = \"{}\"\nsocket = \"{}\"\nfilters_dir = \"{}\"\n\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{}\"]\n",
        lab.srv_if,
        pins.display(),
        r.join("var/lib/xban").display(),
        r.join("run/xban/xban.sock").display(),
        filters.display(),
        r.join("auth.log").display(),
    );
    std::fs::write(&config, &own).unwrap();
    std::fs::write(r.join("auth.log"), "").unwrap();
    let out = xtask_ok(&mut cargo_xtask(&[
        "install", "--root", root_arg, "--binary", bin_arg,
    ]));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), own);
    let new = r.join("etc/xban/xban.toml.new");
    assert_eq!(
        std::fs::read(&new).unwrap(),
        std::fs::read(deploy("xban.toml")).unwrap()
    );
    assert_eq!(mode(&new), 0o600);
    assert!(out.contains("xban.toml.new"), "{out}");

    // An enabled agent is running from the installation, with a ban.
    let wants = r.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(&unit, wants.join("xban.service")).unwrap();
    let agent_log = r.join("agent.log");
    let agent = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.srv_ns))
        .arg(&installed)
        .arg("-c")
        .arg(&config)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Reaped(Some(agent));
    let _pins = RemovePins {
        pins: pins.clone(),
        bin: installed.clone(),
        config: config.clone(),
        netns: lab.srv_ns.clone(),
    };
    let xban = |args: &[&str]| {
        Command::new(&installed)
            .arg("-c")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(
        wait_for(Duration::from_secs(30), || xban(&["status"])
            .status
            .success()),
        "{}",
        std::fs::read_to_string(&agent_log).unwrap_or_default()
    );
    assert!(xban(&["ban", ATK_V4]).status.success());
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4));
    assert!(lab.xdp_attached());

    // Uninstall tears down first (in the lab's namespace, where the agent's
    // firewall lives), then removes the program and the unit.
    let out = xtask_ok(
        scrubbed("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.srv_ns))
            .args(["cargo", "xtask", "uninstall", "--root", root_arg]),
    );
    let child = agent.0.as_mut().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || matches!(
            child.try_wait(),
            Ok(Some(_))
        )),
        "the agent still runs after uninstall"
    );
    assert!(!pins.exists(), "{out}");
    assert!(!lab.xdp_attached(), "{out}");
    assert!(lab.udp_reaches(ATK_V4, SRV_V4));
    assert!(!installed.exists() && !unit.exists(), "{out}");
    assert!(!wants.join("xban.service").exists(), "disabled: {out}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        own,
        "config kept"
    );
    assert!(
        r.join("var/lib/xban/xban.sqlite3").is_file(),
        "state kept: {out}"
    );
    assert!(
        out.contains("kept") && out.contains("operator data"),
        "{out}"
    );

    // Uninstalling again: nothing to tear down, nothing to remove, no error.
    let out = xtask_ok(&mut cargo_xtask(&["uninstall", "--root", root_arg]));
    assert!(out.contains("teardown skipped"), "{out}");
    assert!(out.contains("was not installed"), "{out}");

    // A staged root with the default config names this machine's own pins:
    // its uninstall must not tear down the machine's agent.
    let staged = tempfile::tempdir().unwrap();
    let staged_arg = staged.path().to_str().unwrap();
    xtask_ok(&mut cargo_xtask(&[
        "install", "--root", staged_arg, "--binary", bin_arg,
    ]));
    let out = xtask_ok(&mut cargo_xtask(&["uninstall", "--root", staged_arg]));
    assert!(
        out.contains("teardown skipped") && out.contains("this machine's own agent's pins"),
        "{out}"
    );
    assert!(!staged.path().join("usr/local/sbin/xban").exists(), "{out}");
}

/// Tears down what a failed test leaves behind: with the test's own config,
/// in the lab's namespace (never the machine's /sys/fs/bpf/xban or
/// firewall), then removes the pins if that could not.
struct RemovePins {
    pins: PathBuf,
    bin: PathBuf,
    config: PathBuf,
    netns: String,
}

impl Drop for RemovePins {
    fn drop(&mut self) {
        if self.pins.exists() {
            let bin = if self.bin.exists() {
                self.bin.clone()
            } else {
                xban_bin()
            };
            let _ = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.netns))
                .arg(bin)
                .arg("-c")
                .arg(&self.config)
                .arg("teardown")
                .output();
            let _ = std::fs::remove_dir_all(&self.pins);
        }
    }
}

// ---- the demo -------------------------------------------------------------------

/// `cargo xtask demo` running, its stdout read line by line.
struct DemoRun {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl DemoRun {
    fn start() -> DemoRun {
        require_root();
        let bin = xban_bin();
        let mut child = cargo_xtask(&["demo", "--binary", bin.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        DemoRun {
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one contains `marker`; false at the end or timeout.
    fn read_until(&mut self, marker: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(marker);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    fn output(&self) -> String {
        self.seen.join("\n")
    }

    /// The value printed after `label` at the start of a line (`  server    netns NAME ...`).
    fn field(&self, label: &str, index: usize) -> String {
        self.seen
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().nth(index))
            .unwrap_or_else(|| panic!("no `{label}` line in:\n{}", self.output()))
            .to_string()
    }

    /// Waits for the exit; kills after `timeout`.
    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                // Whatever was printed before the exit.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(
                Instant::now() < end,
                "the demo did not finish within {timeout:?}:\n{}",
                self.output()
            );
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the demo created, named in its first lines; all must be gone.
    fn assert_cleaned_up(&self) {
        let srv = self.field("server", 1);
        let atk = self.field("attacker", 1);
        let files = self.field("files", 0);
        let pins = self.field("pins", 0);
        assert!(srv.starts_with("xban-demo-") && atk.starts_with("xban-demo-"));
        for ns in [&srv, &atk] {
            assert!(
                !Path::new("/run/netns").join(ns).exists(),
                "namespace {ns} left behind"
            );
        }
        assert!(!Path::new(&files).exists(), "{files} left behind");
        assert!(!Path::new(&pins).exists(), "{pins} left behind");
        // No agent of the demo still running.
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            assert!(
                !cmdline.contains(&files),
                "a process of the demo still runs: {cmdline}"
            );
        }
    }
}

impl Drop for DemoRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Ctrl-C: the demo cleans up after itself.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let end = Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn demo_runs_to_completion_and_shows_every_step() {
    let mut demo = DemoRun::start();
    // Building xtask may take a while if it is not fresh; the demo itself
    // takes well under a minute.
    demo.read_until("xban demo:", Duration::from_secs(600));
    let started = Instant::now();
    let status = demo.wait(Duration::from_secs(120));
    let out = demo.output();
    assert!(status.success(), "{status}:\n{out}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the demo took {:?}",
        started.elapsed()
    );
    for expected in [
        // the failures and the ban
        "Failed password for invalid user admin0 from 198.51.100.2",
        "ban 198.51.100.2 jail=sshd class=drop bantime=8s failures=3",
        // packets dropped, counted by XDP
        "0 of 20 arrived",
        // the expiry
        "unban 198.51.100.2 jail=sshd class=drop reason=expired",
        // escalation to a longer ban
        "escalated: repeat offender",
        "ban 198.51.100.2 jail=sshd class=drop bantime=30s failures=3",
        // the manual unban
        "unbanned 198.51.100.2 (jail sshd)",
        // the tarpit class
        "ban 198.51.100.2 jail=sshd class=tarpit bantime=1m failures=3",
        "never reached the server's socket",
        "tarpit steering:",
        // the clean-up
        "deleted the namespaces",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    let dropped_line = out
        .lines()
        .find(|l| l.contains("dropped") && l.contains("of 20 arrived"))
        .unwrap();
    let plus: u64 = dropped_line
        .split("(+")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{dropped_line}"));
    assert!(plus >= 20, "{dropped_line}");
    demo.assert_cleaned_up();
}

#[test]
fn demo_cleans_up_when_interrupted() {
    let mut demo = DemoRun::start();
    // Interrupted once the agent runs, XDP is attached and a ban is in.
    assert!(
        demo.read_until("== 4.", Duration::from_secs(600)),
        "{}",
        demo.output()
    );
    let pins = PathBuf::from(demo.field("pins", 0));
    assert!(pins.exists(), "the agent's pins exist while it runs");
    let pid = demo.child.as_ref().unwrap().id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = demo.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{}", demo.output());
    demo.assert_cleaned_up();
}
