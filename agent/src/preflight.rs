//! Start-up checks: everything that would otherwise fail only after XDP is
//! attached (unreadable logs, missing log directories, missing interfaces,
//! a pin directory off bpffs, a metrics address already taken), found
//! before. Each error names the key and says the fix.
//!
//! [`preflight`] looks at the machine and runs in `xban run` before anything
//! touches the kernel, and in `xban check`. Checks of the settings themselves
//! (that a configuration would parse but do something else) belong to
//! [`Config::validate`](crate::config::Config::validate), in `config/checks.rs`.

use std::path::{Path, PathBuf};

use crate::config::{file_kind, ResolvedConfig, SourceSpec};
use crate::sys::paths;
use crate::validation::ValidationError;

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

/// Why the agent does not start: every problem found, each with its key.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("start-up checks failed, nothing was changed:\n  {}", join(.0))]
    Problems(Vec<ValidationError>),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn join(problems: &[ValidationError]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Everything that would fail after XDP is attached, found before. All
/// problems are reported at once, each with its key.
pub fn preflight(
    cfg: &ResolvedConfig,
    opts: PreflightOptions,
) -> Result<Preflight, PreflightError> {
    let mut out = Preflight::default();
    let mut errors: Vec<ValidationError> = Vec::new();
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
                Err(e) => errors.push(ValidationError::new(key, e)),
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
            errors.push(ValidationError::new("agent.bpf_pin_dir", e));
        }
    }
    if let (Some(addr), true) = (cfg.agent.metrics_listen, opts.bind_metrics) {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                out.metrics = Some(l);
            }
            Err(e) => errors.push(ValidationError::new("agent.metrics_listen", format!("cannot listen on {addr}: {e} (choose a free address and port, or remove metrics_listen)"))),
        }
    }
    if !errors.is_empty() {
        return Err(PreflightError::Problems(errors));
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
    fn resolved(jails: &str, agent: &str) -> ResolvedConfig {
        let text = format!("[agent]\nfilters_dir = \"/nonexistent-xban\"\n{agent}\n{jails}");
        Config::parse(&text).unwrap().validate().unwrap()
    }

    fn run(cfg: &ResolvedConfig, bind_metrics: bool) -> anyhow::Result<Preflight> {
        Ok(preflight(
            cfg,
            PreflightOptions {
                bind_metrics,
                kernel_side: true,
            },
        )?)
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
