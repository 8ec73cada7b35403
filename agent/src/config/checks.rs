//! Checks of single settings (and of `[agent]` against `[escalation]`),
//! pure but for a `stat` or two: each returns a [`ValidationError`] naming
//! the key, with the fix. They run in [`Config::validate`](super::Config::validate);
//! what needs the machine as it is at start (readable logs, interfaces,
//! bpffs, a free metrics port) is [`crate::preflight`]'s.

use std::path::{Component, Path};
use std::time::Duration;

use super::AgentConfig;
use crate::addr::Target;
use crate::escalation::EscalationConfig;
use crate::sys::paths;
use crate::units::{BanTime, MAX_DURATION};
use crate::validation::{invalid, ValidationError};

/// A ban time of 0 bans nothing: refused, with the way to say what was meant.
pub(super) fn check_bantime(place: &str, b: BanTime) -> Result<(), ValidationError> {
    match b {
        BanTime::Finite(d) if d.is_zero() => Err(invalid(
            place,
            "a ban of 0 s ends as it starts: set a duration like \"10m\", or \"permanent\"; to stop a jail banning, set enabled = false",
        )),
        BanTime::Finite(d) if d > MAX_DURATION => Err(invalid(place, over_max_text(d.as_secs(), true))),
        _ => Ok(()),
    }
}

/// A counting window of 0 never holds two failures: refused.
pub(super) fn check_window(place: &str, d: Duration) -> Result<(), ValidationError> {
    if d.is_zero() {
        return Err(invalid(
            place,
            "a window of 0 s never holds two failures: set a duration like \"10m\"",
        ));
    }
    if d > MAX_DURATION {
        return Err(invalid(place, over_max_text(d.as_secs(), false)));
    }
    Ok(())
}

fn over_max_text(secs: u64, permanent_ok: bool) -> String {
    format!(
        "`{secs}` seconds is longer than the maximum duration, 3650d (10 years){}",
        if permanent_ok {
            ": for longer, write \"permanent\""
        } else {
            ""
        }
    )
}

/// An ignoreip list: addresses and prefixes, and DNS host names.
pub(super) fn parse_ignore(
    place: &str,
    list: &[String],
) -> Result<(Vec<Target>, Vec<String>), ValidationError> {
    let mut targets = Vec::new();
    let mut names = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match s.parse::<Target>() {
            Ok(t) => targets.push(t),
            Err(_) if crate::dns::is_host_name(s.trim()) => {
                names.push(crate::dns::normalise(s.trim()))
            }
            Err(e) => {
                return Err(invalid(
                    format!("{place}[{i}]"),
                    format!("{e}, or a DNS host name like home.example.org"),
                ))
            }
        }
    }
    names.sort();
    names.dedup();
    Ok((targets, names))
}

/// Jail names end up in log lines (`jail=NAME`, read back by the recidive
/// filter), metric labels, database keys (`file:NAME:path`) and command
/// lines: letters, digits, `-`, `_` and `.` only, and none of the names the
/// agent uses for its own bans.
pub(super) fn check_jail_name(name: &str) -> Result<(), ValidationError> {
    let place = format!("jails.{name}");
    if name.is_empty() || name.len() > 64 {
        return Err(invalid(
            place,
            "a jail name must be 1 to 64 characters long",
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(place, format!(
            "jail name `{}` contains {c:?}: use letters, digits, `-`, `_` and `.` only (e.g. [jails.nginx-auth])",
            name.escape_default()
        )));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid(
            place,
            format!("jail name `{name}` must start with a letter or digit"),
        ));
    }
    if let Some(r) = crate::guard::RESERVED_JAIL_NAMES
        .iter()
        .find(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(invalid(place, format!(
            "`{name}` is reserved: xban records its own bans under `{r}` (reserved: {}); rename the jail",
            crate::guard::RESERVED_JAIL_NAMES.join(", ")
        )));
    }
    Ok(())
}

/// A literal log path that exists must be a regular file (or a link to
/// one); a glob must compile. `place` is the key (`jails.NAME.logpath[I]`).
pub(super) fn check_logpath_shape(place: &str, raw: &str) -> Result<(), ValidationError> {
    let crate::source::file::PatternParts { dir, exact, .. } =
        crate::source::file::pattern_parts(raw).map_err(|e| invalid(place, e.to_string()))?;
    if let Some(name) = exact {
        let path = dir.join(name);
        if let Ok(meta) = std::fs::metadata(&path) {
            if !meta.is_file() {
                return Err(invalid(place, format!(
                    "`{raw}` is {}, not a log file: name the file itself (e.g. /var/log/auth.log) or a file-name glob (e.g. /var/log/nginx/*.log)",
                    file_kind(&meta)
                )));
            }
        }
    }
    Ok(())
}

/// How an error names what is at a path that should be something else.
pub(crate) fn file_kind(meta: &std::fs::Metadata) -> &'static str {
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

fn check_path(
    key: &str,
    path: &Path,
    kind: PathKind,
    example: &str,
) -> Result<(), ValidationError> {
    let shown = path.display();
    if path.as_os_str().is_empty() {
        return Err(invalid(
            key,
            format!(
                "is empty: set an absolute path, e.g. {key_short} = \"{example}\"",
                key_short = short(key)
            ),
        ));
    }
    if !path.is_absolute() {
        return Err(invalid(
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
        return Err(invalid(
            key,
            format!(
                "`{shown}` contains `.` or `..`: write the path without them, e.g. \"{example}\""
            ),
        ));
    }
    if kind == PathKind::PinDir {
        let root = Path::new(paths::BPFFS_MOUNT);
        if path == root || path == Path::new("/") {
            return Err(invalid(
                key,
                format!("`{shown}` is the root of bpffs: teardown removes everything in the pin directory, other tools' pins too; use a directory of xban's own, e.g. \"{example}\""),
            ));
        }
    } else if let Some(tree) = KERNEL_TREES.iter().find(|t| path.starts_with(t)) {
        return Err(invalid(
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
                        return Err(invalid(
                            key,
                            format!("`{shown}` exists and is {}, not {want}: choose another path, e.g. \"{example}\"", file_kind(&meta)),
                        ));
                    }
                } else if !meta.is_dir() {
                    return Err(invalid(
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
                return Err(invalid(
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
pub(super) fn check_agent_section(agent: &AgentConfig) -> Result<(), ValidationError> {
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
        return Err(invalid(
            "agent.bpf_pin_dir",
            "the state directory or socket lies inside the pin directory, which teardown empties: keep them apart",
        ));
    }
    let mut seen = Vec::new();
    for (i, name) in agent.interfaces.iter().enumerate() {
        let key = format!("agent.interfaces[{i}]");
        if name.is_empty() {
            return Err(invalid(
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
            return Err(invalid(
                key,
                format!("`{}` is not an interface name (at most 15 characters, no `/`, `:` or spaces): `ip link` lists them", name.escape_default()),
            ));
        }
        if seen.contains(&name) {
            return Err(invalid(
                key,
                format!("`{name}` is listed twice: list each interface once"),
            ));
        }
        seen.push(name);
    }
    if agent.min_prefix_v4 > 32 {
        return Err(invalid(
            "agent.min_prefix_v4",
            format!(
                "{} is out of range (0 to 32; default 8)",
                agent.min_prefix_v4
            ),
        ));
    }
    if agent.min_prefix_v6 > 128 {
        return Err(invalid(
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
pub(super) fn check_escalation_widths(
    agent: &AgentConfig,
    esc: &EscalationConfig,
) -> Result<(), ValidationError> {
    let sn = &esc.subnet;
    if !(esc.enabled && sn.enabled) {
        return Ok(());
    }
    if sn.v4_prefix < agent.min_prefix_v4 {
        return Err(invalid(
            "escalation.subnet.v4_prefix",
            format!("/{} is wider than [agent] min_prefix_v4 = {}: every widening would be refused; raise v4_prefix or lower min_prefix_v4", sn.v4_prefix, agent.min_prefix_v4),
        ));
    }
    if sn.v6_prefix < agent.min_prefix_v6 {
        return Err(invalid(
            "escalation.subnet.v6_prefix",
            format!("/{} is wider than [agent] min_prefix_v6 = {}: every widening would be refused; raise v6_prefix or lower min_prefix_v6", sn.v6_prefix, agent.min_prefix_v6),
        ));
    }
    Ok(())
}

/// An allowlist entry wider than the ban limit (`0.0.0.0/0`, `::/0`,
/// `x/0`) is legal but means "never ban anyone" for that range: say so.
pub(super) fn allowlist_warnings(place: &str, list: &[Target], agent: &AgentConfig) -> Vec<String> {
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

#[cfg(test)]
mod tests;
