//! Checks that catch a configuration that would parse but do something else,
//! and, at start-up, everything that would otherwise fail only after XDP is
//! attached (unreadable logs, missing log directories, bad globs, missing
//! interfaces, a metrics address already taken). Each error names the key
//! and says the fix.
//!
//! [`check_agent_section`] and friends are pure (plus a `stat` or two) and run
//! in [`Config::validate`](crate::config::Config::validate); [`preflight`]
//! looks at the machine and runs in `xban run` before anything touches the
//! kernel, and in `xban check`.

use std::path::{Component, Path, PathBuf};

use crate::addr::Target;
use crate::config::{AgentConfig, ResolvedConfig, SourceSpec};
use crate::escalation::EscalationConfig;
use crate::sys::paths;

type Problem = (String, String);

fn problem(place: impl Into<String>, message: impl Into<String>) -> Problem {
    (place.into(), message.into())
}

/// Jail names end up in log lines (`jail=NAME`, read back by the recidive
/// filter), metric labels, database keys (`file:NAME:path`) and command
/// lines: letters, digits, `-`, `_` and `.` only, and none of the names the
/// agent uses for its own bans.
pub fn check_jail_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a jail name must be 1 to 64 characters long".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "jail name `{}` contains {c:?}: use letters, digits, `-`, `_` and `.` only (e.g. [jails.nginx-auth])",
            name.escape_default()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "jail name `{name}` must start with a letter or digit"
        ));
    }
    if let Some(r) = crate::guard::RESERVED_JAIL_NAMES
        .iter()
        .find(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(format!(
            "`{name}` is reserved: xban records its own bans under `{r}` (reserved: {}); rename the jail",
            crate::guard::RESERVED_JAIL_NAMES.join(", ")
        ));
    }
    Ok(())
}

/// A literal log path that exists must be a regular file (or a link to
/// one); a glob must compile.
pub fn check_logpath_shape(raw: &str) -> Result<(), String> {
    let crate::source::file::PatternParts { dir, exact, .. } =
        crate::source::file::pattern_parts(raw).map_err(|e| e.to_string())?;
    if let Some(name) = exact {
        let path = dir.join(name);
        if let Ok(meta) = std::fs::metadata(&path) {
            if !meta.is_file() {
                return Err(format!(
                    "`{raw}` is {}, not a log file: name the file itself (e.g. /var/log/auth.log) or a file-name glob (e.g. /var/log/nginx/*.log)",
                    file_kind(&meta)
                ));
            }
        }
    }
    Ok(())
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PathKind {
    /// A directory the agent creates if missing.
    Dir,
    /// The control socket (its parent is created if missing).
    Socket,
    /// The pin directory on bpffs.
    PinDir,
}

/// Kernel filesystems: nothing of the agent's own belongs there (except the
/// pin directory, on bpffs under /sys/fs/bpf).
const KERNEL_TREES: &[&str] = &["/proc", "/sys", "/dev"];

fn check_path(key: &str, path: &Path, kind: PathKind, example: &str) -> Result<(), Problem> {
    let shown = path.display();
    if path.as_os_str().is_empty() {
        return Err(problem(
            key,
            format!(
                "is empty: set an absolute path, e.g. {key_short} = \"{example}\"",
                key_short = short(key)
            ),
        ));
    }
    if !path.is_absolute() {
        return Err(problem(
            key,
            format!(
                "`{shown}` is not an absolute path: e.g. {} = \"{example}\"",
                short(key)
            ),
        ));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(problem(
            key,
            format!(
                "`{shown}` contains `.` or `..`: write the path without them, e.g. \"{example}\""
            ),
        ));
    }
    if kind == PathKind::PinDir {
        let root = Path::new(paths::BPFFS_MOUNT);
        if path == root || path == Path::new("/") {
            return Err(problem(
                key,
                format!("`{shown}` is the root of bpffs: teardown removes everything in the pin directory, other tools' pins too; use a directory of xban's own, e.g. \"{example}\""),
            ));
        }
    } else if let Some(tree) = KERNEL_TREES.iter().find(|t| path.starts_with(t)) {
        return Err(problem(
            key,
            format!("`{shown}` is under {tree}, a kernel filesystem, where the agent's files cannot live: e.g. \"{example}\""),
        ));
    }
    // The nearest part of the path that exists must be a directory (a file
    // there means every create below it fails with a puzzling ENOTDIR).
    let mut existing = Some(path);
    while let Some(p) = existing {
        match std::fs::metadata(p) {
            Ok(meta) => {
                if p == path {
                    let ok = match kind {
                        PathKind::Dir | PathKind::PinDir => meta.is_dir(),
                        PathKind::Socket => {
                            use std::os::unix::fs::FileTypeExt;
                            meta.file_type().is_socket()
                        }
                    };
                    if !ok {
                        let want = if kind == PathKind::Socket {
                            "a socket (it would be replaced)"
                        } else {
                            "a directory"
                        };
                        return Err(problem(
                            key,
                            format!("`{shown}` exists and is {}, not {want}: choose another path, e.g. \"{example}\"", file_kind(&meta)),
                        ));
                    }
                } else if !meta.is_dir() {
                    return Err(problem(
                        key,
                        format!("`{shown}` lies under {}, which is {}, not a directory: choose another path, e.g. \"{example}\"", p.display(), file_kind(&meta)),
                    ));
                }
                break;
            }
            Err(_) => existing = p.parent(),
        }
    }
    if kind == PathKind::PinDir {
        // Inside another agent's pin directory, either teardown removes the
        // other's pins.
        for anc in path.ancestors().skip(1) {
            if anc.join(paths::pins::PROGRAM).exists() || anc.join(paths::pins::LINKS).is_dir() {
                return Err(problem(
                    key,
                    format!("`{shown}` is inside {}, another xban pin directory: use a directory beside it, e.g. \"{}\"", anc.display(), anc.with_file_name("xban-2").display()),
                ));
            }
        }
    }
    Ok(())
}

fn short(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// `[agent]`: paths, interfaces and prefix limits.
pub fn check_agent_section(agent: &AgentConfig) -> Result<(), Problem> {
    check_path(
        "agent.state_dir",
        &agent.state_dir,
        PathKind::Dir,
        paths::STATE_DIR,
    )?;
    check_path(
        "agent.socket",
        &agent.socket,
        PathKind::Socket,
        paths::SOCKET,
    )?;
    check_path(
        "agent.bpf_pin_dir",
        &agent.bpf_pin_dir,
        PathKind::PinDir,
        paths::BPF_PIN_DIR,
    )?;
    check_path(
        "agent.filters_dir",
        &agent.filters_dir,
        PathKind::Dir,
        paths::FILTERS_DIR,
    )?;
    if agent.state_dir.starts_with(&agent.bpf_pin_dir)
        || agent.socket.starts_with(&agent.bpf_pin_dir)
    {
        return Err(problem(
            "agent.bpf_pin_dir",
            "the state directory or socket lies inside the pin directory, which teardown empties: keep them apart",
        ));
    }
    let mut seen = Vec::new();
    for (i, name) in agent.interfaces.iter().enumerate() {
        let key = format!("agent.interfaces[{i}]");
        if name.is_empty() {
            return Err(problem(
                key,
                "is empty: name an interface (`ip link` lists them), or leave interfaces = [] for the default route's",
            ));
        }
        if name.len() > 15
            || name.contains(['/', ':'])
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
            || name == "."
            || name == ".."
        {
            return Err(problem(
                key,
                format!("`{}` is not an interface name (at most 15 characters, no `/`, `:` or spaces): `ip link` lists them", name.escape_default()),
            ));
        }
        if seen.contains(&name) {
            return Err(problem(
                key,
                format!("`{name}` is listed twice: list each interface once"),
            ));
        }
        seen.push(name);
    }
    if agent.min_prefix_v4 > 32 {
        return Err(problem(
            "agent.min_prefix_v4",
            format!(
                "{} is out of range (0 to 32; default 8)",
                agent.min_prefix_v4
            ),
        ));
    }
    if agent.min_prefix_v6 > 128 {
        return Err(problem(
            "agent.min_prefix_v6",
            format!(
                "{} is out of range (0 to 128; default 32)",
                agent.min_prefix_v6
            ),
        ));
    }
    Ok(())
}

/// Subnet widening must not aim wider than the guard allows: each widening
/// would be refused.
pub fn check_escalation_widths(agent: &AgentConfig, esc: &EscalationConfig) -> Result<(), Problem> {
    let sn = &esc.subnet;
    if !(esc.enabled && sn.enabled) {
        return Ok(());
    }
    if sn.v4_prefix < agent.min_prefix_v4 {
        return Err(problem(
            "escalation.subnet.v4_prefix",
            format!("/{} is wider than [agent] min_prefix_v4 = {}: every widening would be refused; raise v4_prefix or lower min_prefix_v4", sn.v4_prefix, agent.min_prefix_v4),
        ));
    }
    if sn.v6_prefix < agent.min_prefix_v6 {
        return Err(problem(
            "escalation.subnet.v6_prefix",
            format!("/{} is wider than [agent] min_prefix_v6 = {}: every widening would be refused; raise v6_prefix or lower min_prefix_v6", sn.v6_prefix, agent.min_prefix_v6),
        ));
    }
    Ok(())
}

/// An allowlist entry wider than the ban limit (`0.0.0.0/0`, `::/0`,
/// `x/0`) is legal but means "never ban anyone" for that range: say so.
pub fn allowlist_warnings(place: &str, list: &[Target], agent: &AgentConfig) -> Vec<String> {
    let mut out = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let (min, fam) = if t.is_ipv4() {
            (agent.min_prefix_v4, "IPv4")
        } else {
            (agent.min_prefix_v6, "IPv6")
        };
        if t.prefix() == 0 {
            out.push(format!("{place}[{i}]: `{t}` allowlists every {fam} address: no {fam} address will ever be banned; remove it unless that is what you want"));
        } else if t.prefix() < min {
            out.push(format!("{place}[{i}]: `{t}` allowlists a /{} ({fam}), wider than any ban may be (min_prefix = {min}): did you mean a narrower prefix?", t.prefix()));
        }
    }
    out
}

/// What the pre-flight hands on to the agent.
#[derive(Debug, Default)]
pub struct Preflight {
    /// `[agent] metrics_listen`, bound already.
    pub metrics: Option<std::net::TcpListener>,
    /// Non-fatal findings (a log file that does not exist yet).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PreflightOptions {
    /// Bind the metrics address (the agent keeps it; `xban check` only
    /// tries when no agent is running).
    pub bind_metrics: bool,
    /// Check interfaces and the pin directory (not in a dry run).
    pub kernel_side: bool,
}

/// Everything that would fail after XDP is attached, found before. All
/// problems are reported at once, each with its key.
pub fn preflight(cfg: &ResolvedConfig, opts: PreflightOptions) -> anyhow::Result<Preflight> {
    let mut out = Preflight::default();
    let mut errors: Vec<String> = Vec::new();
    for jail in &cfg.jails {
        let (patterns, journal_fallback) = match &jail.source {
            SourceSpec::Files(p) => (p.as_slice(), false),
            SourceSpec::FilesOrJournal { files, .. } => (files.as_slice(), true),
            SourceSpec::Journal(_) => continue,
        };
        // With a journal to fall back on, missing files are not an error.
        let mut any_found = false;
        let mut missing = Vec::new();
        for (i, raw) in patterns.iter().enumerate() {
            let key = format!("jails.{}.logpath[{i}]", jail.name);
            match check_pattern_now(raw) {
                Ok(PatternNow::Readable) => any_found = true,
                Ok(PatternNow::NotYet(note)) => missing.push(format!("{key}: {note}")),
                Err(e) => errors.push(format!("{key}: {e}")),
            }
        }
        if !journal_fallback || any_found {
            out.notes.extend(missing);
        }
    }
    if opts.kernel_side {
        for (i, name) in cfg.agent.interfaces.iter().enumerate() {
            if nix::net::if_::if_nametoindex(name.as_str()).is_err() {
                // Not an error: XDP is attached when it appears (a unit
                // started before its interface must not crash-loop).
                out.notes.push(format!("agent.interfaces[{i}]: no interface named `{name}` in this network namespace yet: XDP is attached as soon as it appears (`ip link` lists them)"));
            }
        }
        if let Err(e) = check_pin_dir_mount(&cfg.agent.bpf_pin_dir) {
            errors.push(format!("agent.bpf_pin_dir: {e}"));
        }
    }
    if let (Some(addr), true) = (cfg.agent.metrics_listen, opts.bind_metrics) {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                out.metrics = Some(l);
            }
            Err(e) => errors.push(format!("agent.metrics_listen: cannot listen on {addr}: {e} (choose a free address and port, or remove metrics_listen)")),
        }
    }
    if !errors.is_empty() {
        anyhow::bail!(
            "start-up checks failed, nothing was changed:\n  {}",
            errors.join("\n  ")
        );
    }
    Ok(out)
}

enum PatternNow {
    /// At least one file is there and readable.
    Readable,
    /// Nothing yet; it is read when it appears.
    NotYet(String),
}

fn check_pattern_now(raw: &str) -> Result<PatternNow, String> {
    let crate::source::file::PatternParts {
        dir,
        exact,
        matches,
    } = crate::source::file::pattern_parts(raw).map_err(|e| e.to_string())?;
    match std::fs::metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("directory {} of `{raw}` does not exist: create it or fix the path (missing files are picked up when they appear, but their directory must exist)", dir.display()))
        }
        Err(e) => return Err(format!("cannot look at {}: {e}", dir.display())),
        Ok(m) if !m.is_dir() => {
            return Err(format!("{} (the directory part of `{raw}`) is {}, not a directory", dir.display(), file_kind(&m)))
        }
        Ok(_) => {}
    }
    let open = |p: &Path| -> Result<(), String> {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if !meta.is_file() {
            return Err(format!(
                "`{}` is {}, not a log file: name the file itself",
                p.display(),
                file_kind(&meta)
            ));
        }
        std::fs::File::open(p).map(drop).map_err(|e| {
            format!("cannot read {}: {e} (the agent needs read access: check its owner and mode, e.g. group adm and 0640)", p.display())
        })
    };
    match exact {
        Some(name) => {
            let path = dir.join(name);
            // Following links: a link to a file still to come is "not yet".
            match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Ok(PatternNow::NotYet(format!(
                        "{} does not exist yet; it is read from its start when it appears",
                        path.display()
                    )))
                }
                _ => open(&path).map(|()| PatternNow::Readable),
            }
        }
        None => {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| format!("cannot list {} for `{raw}`: {e}", dir.display()))?;
            let mut found: Vec<PathBuf> = Vec::new();
            for entry in entries.flatten() {
                let p = entry.path();
                // The source follows regular files only; others are skipped.
                if matches(&entry.file_name()) && std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
                    found.push(p);
                }
            }
            for p in &found {
                open(p)?;
            }
            if found.is_empty() {
                Ok(PatternNow::NotYet(format!(
                    "`{raw}` matches no file yet; files are read when they appear"
                )))
            } else {
                Ok(PatternNow::Readable)
            }
        }
    }
}

/// bpffs magic (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn on_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// The pin directory must be a directory of its own on bpffs, not the root
/// of a bpffs mount (teardown would empty it, other tools' pins included).
fn check_pin_dir_mount(pin_dir: &Path) -> Result<(), String> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if pin_dir.exists() && on_bpffs(pin_dir) && !on_bpffs(parent) {
        return Err(format!(
            "{} is the root of a bpffs mount: teardown empties the pin directory, other tools' pins too; use a directory of xban's own, e.g. {}",
            pin_dir.display(),
            pin_dir.join("xban").display()
        ));
    }
    // The nearest existing ancestor must be bpffs, unless it is the usual
    // mount point, which the agent mounts when the system has not.
    let nearest = pin_dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let mount = Path::new(paths::BPFFS_MOUNT);
    if !on_bpffs(nearest)
        && !(pin_dir.starts_with(mount) && (nearest == mount || mount.starts_with(nearest)))
    {
        return Err(format!(
            "{} is not on bpffs ({} is on another filesystem): put it under /sys/fs/bpf, e.g. {}",
            pin_dir.display(),
            nearest.display(),
            paths::BPF_PIN_DIR
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn agent_with(extra: &str) -> Result<(), Problem> {
        let mut cfg: Config = Config::parse(&format!("[agent]\n{extra}\n")).unwrap();
        cfg.agent.filters_dir = std::env::temp_dir();
        check_agent_section(&cfg.agent)
    }

    fn err(extra: &str) -> (String, String) {
        agent_with(extra).expect_err(extra)
    }

    #[test]
    fn bad_agent_paths_name_the_key_and_the_fix() {
        let (k, m) = err("state_dir = \"\"");
        assert_eq!(k, "agent.state_dir");
        assert!(m.contains("is empty") && m.contains("/var/lib/xban"), "{m}");
        let (k, m) = err("bpf_pin_dir = \"xban\"");
        assert_eq!(k, "agent.bpf_pin_dir");
        assert!(
            m.contains("not an absolute path") && m.contains("/sys/fs/bpf/xban"),
            "{m}"
        );
        let (k, m) = err("bpf_pin_dir = \"/sys/fs/bpf\"");
        assert_eq!(k, "agent.bpf_pin_dir");
        assert!(m.contains("root of bpffs"), "{m}");
        let (k, m) = err("bpf_pin_dir = \"/sys/fs/bpf/\"");
        assert_eq!(k, "agent.bpf_pin_dir");
        assert!(m.contains("root of bpffs"), "{m}");
        let (k, m) = err("state_dir = \"/proc/xban\"");
        assert_eq!(k, "agent.state_dir");
        assert!(m.contains("under /proc"), "{m}");
        let (k, m) = err("socket = \"/proc/self/xban.sock\"");
        assert_eq!(k, "agent.socket");
        assert!(m.contains("under /proc"), "{m}");
        let (k, m) = err("state_dir = \"/var/lib/../xban\"");
        assert_eq!(k, "agent.state_dir");
        assert!(m.contains("`..`"), "{m}");

        // Under a regular file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let (k, m) = err(&format!("socket = \"{}/x.sock\"", file.display()));
        assert_eq!(k, "agent.socket");
        assert!(
            m.contains("lies under") && m.contains("regular file"),
            "{m}"
        );
        let (k, m) = err(&format!("state_dir = \"{}/a/b\"", file.display()));
        assert_eq!(k, "agent.state_dir");
        assert!(m.contains("not a directory"), "{m}");
        // A socket path that is a regular file is never deleted to make room.
        let (k, m) = err(&format!("socket = \"{}\"", file.display()));
        assert_eq!(k, "agent.socket");
        assert!(m.contains("exists and is a regular file"), "{m}");
        // Nested in another agent's pin directory.
        let pins = dir.path().join("pins");
        std::fs::create_dir_all(pins.join("links")).unwrap();
        let (k, m) = err(&format!("bpf_pin_dir = \"{}/inner\"", pins.display()));
        assert_eq!(k, "agent.bpf_pin_dir");
        assert!(m.contains("another xban pin directory"), "{m}");
        // State inside the pin directory.
        let (k, _) = err("state_dir = \"/sys/fs/bpf/xban/state\"");
        assert_eq!(k, "agent.state_dir", "under /sys: refused first");
    }

    #[test]
    fn bad_interfaces_name_the_key() {
        let (k, m) = err("interfaces = [\"\"]");
        assert_eq!(k, "agent.interfaces[0]");
        assert!(m.contains("is empty") && m.contains("ip link"), "{m}");
        let (k, m) = err("interfaces = [\"eth0\", \"a/b\"]");
        assert_eq!(k, "agent.interfaces[1]");
        assert!(m.contains("not an interface name"), "{m}");
        let (k, _) = err("interfaces = [\"averyveryverylongname\"]");
        assert_eq!(k, "agent.interfaces[0]");
        let (k, m) = err("interfaces = [\"eth0\", \"eth0\"]");
        assert_eq!(k, "agent.interfaces[1]");
        assert!(m.contains("twice"), "{m}");
        let (k, _) = err("min_prefix_v4 = 33");
        assert_eq!(k, "agent.min_prefix_v4");
        agent_with("interfaces = [\"eth0\", \"veth-x.10\"]").unwrap();
    }

    #[test]
    fn jail_names_are_checked() {
        for bad in ["blocklist", "manual", "subnet", "fleet", "geo", "Manual"] {
            let e = check_jail_name(bad).unwrap_err();
            assert!(e.contains("reserved"), "{bad}: {e}");
        }
        for bad in ["ss\"hd", "a b", "x:y", "", "-x", "ssh'd", "a\nb", "é"] {
            assert!(check_jail_name(bad).is_err(), "{bad:?}");
        }
        for good in ["sshd", "nginx-auth", "postfix_sasl", "web.v2", "2fa"] {
            check_jail_name(good).unwrap();
        }
    }

    #[test]
    fn logpath_that_is_not_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_logpath_shape(&dir.path().display().to_string()).unwrap_err();
        assert!(e.contains("is a directory, not a log file"), "{e}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = check_logpath_shape(&fifo.display().to_string()).unwrap_err();
        assert!(e.contains("FIFO"), "{e}");
        let e = check_logpath_shape("/dev/null").unwrap_err();
        assert!(e.contains("character device"), "{e}");
        let e = check_logpath_shape("/var/log/[unclosed.log").unwrap_err();
        assert!(e.contains("not a valid glob"), "{e}");
        check_logpath_shape(&dir.path().join("later.log").display().to_string()).unwrap();
    }

    fn resolved(jails: &str, agent: &str) -> ResolvedConfig {
        let text = format!("[agent]\nfilters_dir = \"/nonexistent-xban\"\n{agent}\n{jails}");
        Config::parse(&text).unwrap().validate().unwrap()
    }

    fn run(cfg: &ResolvedConfig, bind_metrics: bool) -> anyhow::Result<Preflight> {
        preflight(
            cfg,
            PreflightOptions {
                bind_metrics,
                kernel_side: true,
            },
        )
    }

    #[test]
    fn start_up_problems_are_found_all_at_once_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::write(dir.path().join("a.log"), "").unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = resolved(
            &format!(
                "[jails.one]\nlogpath = [\"{d}/a.log\", \"{d}/missing-dir/b.log\", \"{d}/nodir/*.log\"]\nfailregex = ['x <HOST>']\n\
                 [jails.two]\nlogpath = [\"/proc/sys/vm/drop_caches\"]\nfailregex = ['x <HOST>']\n"
            ),
            &format!(
                "interfaces = [\"lo\", \"xban-no-such0\"]\nmetrics_listen = \"{}\"",
                taken.local_addr().unwrap()
            ),
        );
        let e = format!("{:#}", run(&cfg, true).unwrap_err());
        assert!(e.contains("nothing was changed"), "{e}");
        for want in [
            "jails.one.logpath[1]: directory",
            "jails.one.logpath[2]: directory",
            "does not exist: create it",
            // Write-only even for root: a log the agent cannot read.
            "jails.two.logpath[0]: cannot read /proc/sys/vm/drop_caches",
            "agent.metrics_listen: cannot listen on",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        assert!(
            !e.contains("jails.one.logpath[0]") && !e.contains("interfaces[0]"),
            "{e}"
        );
        // Without the metrics bind (`xban check` beside a running agent).
        let e = format!("{:#}", run(&cfg, false).unwrap_err());
        assert!(!e.contains("metrics_listen"), "{e}");
    }

    #[test]
    fn a_good_config_passes_and_keeps_the_metrics_socket() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::write(dir.path().join("a.log"), "").unwrap();
        std::fs::create_dir(dir.path().join("sub.log")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("future"), dir.path().join("link.log")).unwrap();
        let cfg = resolved(
            &format!(
                "[jails.one]\nlogpath = [\"{d}/a.log\", \"{d}/later.log\", \"{d}/*.log\", \"{d}/link.log\"]\nfailregex = ['x <HOST>']\n"
            ),
            "interfaces = [\"lo\"]\nmetrics_listen = \"127.0.0.1:0\"",
        );
        let p = run(&cfg, true).unwrap();
        assert!(p.metrics.is_some());
        // Files still to come are notes, not errors; a directory a glob
        // matches is skipped, as the source skips it.
        assert_eq!(p.notes.len(), 2, "{:?}", p.notes);
        assert!(
            p.notes[0].contains("later.log does not exist yet"),
            "{:?}",
            p.notes
        );
    }
}
