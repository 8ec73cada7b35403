//! `cargo xtask install` and `cargo xtask uninstall`: the agent, its systemd
//! unit and its default config, under `/` or another root (a staging
//! directory, an image, a test).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::cmd;
use crate::prereq::is_root;
use crate::tasks::{self, Profile};
use crate::workspace::Workspace;

const BINARY: &str = "usr/local/sbin/xban";
const UNIT_DIR: &str = "etc/systemd/system";
const UNIT: &str = "xban.service";
const CONFIG_DIR: &str = "etc/xban";
const CONFIG: &str = "xban.toml";
const FILTERS: &str = "filters";
/// Operator data, never removed: named in uninstall's report.
const STATE_DIR: &str = "var/lib/xban";
/// The agent's pins when the config does not say (agent/src/sys/paths.rs).
const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xban";

/// Any user may run the binary; only root can do anything with it.
const BINARY_MODE: u32 = 0o755;
/// What systemd expects of unit files.
const UNIT_MODE: u32 = 0o644;
/// The config may name management networks (ignoreip) and log paths: root
/// only, like the control socket it points to.
const CONFIG_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o755;

/// The paths of an installation under `root`.
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn new(root: Option<PathBuf>) -> Result<Layout> {
        let root = root.unwrap_or_else(|| PathBuf::from("/"));
        ensure!(
            root.is_absolute(),
            "--root {} must be an absolute path",
            root.display()
        );
        Ok(Layout { root })
    }

    fn is_system(&self) -> bool {
        self.root == Path::new("/")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn binary(&self) -> PathBuf {
        self.path(BINARY)
    }

    fn unit(&self) -> PathBuf {
        self.path(UNIT_DIR).join(UNIT)
    }

    fn config_dir(&self) -> PathBuf {
        self.path(CONFIG_DIR)
    }

    fn config(&self) -> PathBuf {
        self.config_dir().join(CONFIG)
    }

    /// Installing into / changes the running system: root only. Another root
    /// is just a directory.
    fn require_privileges(&self, task: &str) -> Result<()> {
        if self.is_system() && !is_root() {
            bail!(
                "`cargo xtask {task}` writes to /usr/local/sbin and /etc: run it as root, e.g.\n  \
                 sudo -E env \"PATH=$PATH\" cargo xtask {task}\n\
                 or stage it somewhere else with --root DIR"
            );
        }
        Ok(())
    }
}

/// Whether systemd is the running init (sd_booted(3)'s test).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

pub(crate) fn install(
    ws: &Workspace,
    root: Option<PathBuf>,
    binary: Option<PathBuf>,
) -> Result<()> {
    let layout = Layout::new(root)?;
    layout.require_privileges("install")?;
    let binary = match binary {
        Some(b) => {
            ensure!(b.is_file(), "--binary {}: no such file", b.display());
            b
        }
        None => tasks::build(ws, Profile::Release)?,
    };
    let deploy = ws.root.join("deploy");
    let unit_text = fs::read(deploy.join(UNIT))
        .with_context(|| format!("read {}", deploy.join(UNIT).display()))?;
    let config_text = fs::read(deploy.join(CONFIG))
        .with_context(|| format!("read {}", deploy.join(CONFIG).display()))?;

    let bin_bytes = fs::read(&binary).with_context(|| format!("read {}", binary.display()))?;
    replace_file(&layout.binary(), &bin_bytes, BINARY_MODE)?;
    println!(
        "installed {} (from {})",
        layout.binary().display(),
        binary.display()
    );

    install_unit(&layout, &unit_text)?;
    install_config(&layout, &config_text)?;

    let filters = layout.config_dir().join(FILTERS);
    make_dirs(&filters)?;
    println!(
        "{}/ is for your own filters (NAME.toml); the built-in ones are inside the binary",
        filters.display()
    );

    if !layout.is_system() {
        println!(
            "installed under {}: systemd was not told (it only reads units under /)",
            layout.root.display()
        );
        return Ok(());
    }
    if systemd_running() {
        cmd::run(Command::new("systemctl").arg("daemon-reload"))
            .context("systemctl daemon-reload failed")?;
    } else {
        println!("systemd is not running here (no /run/systemd/system): skipped `systemctl daemon-reload`");
    }
    println!(
        "next: review {} (interfaces, ignoreip, jails), then\n  xban -c {} check\n  systemctl enable --now xban\n\
         upgrading a running agent: systemctl restart xban (the new agent adopts the pinned bans: no gap)",
        layout.config().display(),
        layout.config().display()
    );
    Ok(())
}

/// The unit is ours: replaced on every install. A different file already
/// there (edited in place) is kept beside it, where systemd ignores it.
fn install_unit(layout: &Layout, text: &[u8]) -> Result<()> {
    let unit = layout.unit();
    match fs::read(&unit) {
        Ok(old) if old == text => {
            println!("{} is up to date", unit.display());
            return Ok(());
        }
        Ok(_) => {
            let saved = unit.with_extension("service.old");
            fs::rename(&unit, &saved).with_context(|| format!("move {} aside", unit.display()))?;
            println!(
                "{} had local changes: kept as {} (put changes in a drop-in: systemctl edit xban)",
                unit.display(),
                saved.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read {}", unit.display())),
    }
    replace_file(&unit, text, UNIT_MODE)?;
    println!("installed {}", unit.display());
    Ok(())
}

/// The config is the operator's: never overwritten. A newer default goes
/// beside it as xban.toml.new.
fn install_config(layout: &Layout, text: &[u8]) -> Result<()> {
    let config = layout.config();
    match fs::read(&config) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            replace_file(&config, text, CONFIG_MODE)?;
            println!(
                "installed {} (mode {CONFIG_MODE:o}: it protects sshd)",
                config.display()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", config.display())),
        Ok(old) if old == text => println!("{} is up to date", config.display()),
        Ok(_) => {
            let new = config.with_extension("toml.new");
            replace_file(&new, text, CONFIG_MODE)?;
            println!(
                "{} exists and was left alone; the default config of this version is {}\n  \
                 compare: diff {} {}",
                config.display(),
                new.display(),
                config.display(),
                new.display()
            );
        }
    }
    Ok(())
}

fn make_dirs(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))
}

/// Writes `path` through a temporary file and a rename, so that a running
/// binary is replaced rather than written into (ETXTBSY) and nobody ever
/// reads a half-written file.
pub(crate) fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("a file path has a parent")?;
    make_dirs(dir)?;
    let name = path.file_name().context("a file path has a name")?;
    let tmp = dir.join(format!(".{}.xtask-tmp", name.to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    // The umask may have narrowed the mode given to open.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

pub(crate) fn uninstall(root: Option<PathBuf>) -> Result<()> {
    let layout = Layout::new(root)?;
    layout.require_privileges("uninstall")?;
    teardown(&layout);

    if layout.is_system() && systemd_running() {
        // The agent exited after the teardown; this only makes sure systemd
        // does not restart it. Failure (e.g. unit unknown) is not fatal.
        if let Err(e) = cmd::run(Command::new("systemctl").args(["stop", UNIT])) {
            println!("could not stop {UNIT}: {e:#} (continuing)");
        }
    }
    disable(&layout)?;
    for path in [layout.binary(), layout.unit()] {
        match fs::remove_file(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("{} was not installed", path.display())
            }
            Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
        }
    }
    if layout.is_system() {
        if systemd_running() {
            cmd::run(Command::new("systemctl").arg("daemon-reload"))
                .context("systemctl daemon-reload failed")?;
        } else {
            println!("systemd is not running here (no /run/systemd/system): skipped `systemctl daemon-reload`");
        }
    }
    println!(
        "kept {} (config, your filters) and {} (ban database): operator data; remove them yourself if you want them gone",
        layout.config_dir().display(),
        layout.path(STATE_DIR).display()
    );
    Ok(())
}

/// `xban teardown` with the installed binary and config: detach XDP, remove
/// the pinned maps and the tarpit chain and sets (stopping a running agent
/// first). Left behind, they would keep dropping the banned addresses with
/// nobody to lift the bans. Failure is reported, not fatal: the files must
/// go either way.
fn teardown(layout: &Layout) {
    let (bin, config) = (layout.binary(), layout.config());
    if !bin.is_file() {
        println!(
            "teardown skipped: {} is not installed (remove XDP and pins by hand with `xban teardown` if an agent ran)",
            bin.display()
        );
        return;
    }
    if !config.is_file() {
        println!(
            "teardown skipped: {} is missing, so the pin directory is unknown (default /sys/fs/bpf/xban: `xban teardown` removes it)",
            config.display()
        );
        return;
    }
    if !layout.is_system() {
        let text = fs::read_to_string(&config).unwrap_or_default();
        let pins = pin_dir_of(&text);
        if pins == Path::new(DEFAULT_PIN_DIR) {
            println!(
                "teardown skipped: {} names {DEFAULT_PIN_DIR}, this machine's own agent's pins, not those of an agent under {}; \
                 if that is what you mean: {} -c {} teardown",
                config.display(),
                layout.root.display(),
                bin.display(),
                config.display()
            );
            return;
        }
    }
    let mut teardown = Command::new(&bin);
    teardown.arg("-c").arg(&config).arg("teardown");
    if let Err(e) = cmd::run(&mut teardown) {
        println!("teardown failed: {e:#}; continuing with the files (check `bpftool link show` and `ip link` for a leftover XDP program)");
    }
}

/// `[agent] bpf_pin_dir` of a config (the agent's default when unset). A
/// line scan, enough for the one key: xtask does not parse TOML.
fn pin_dir_of(config: &str) -> PathBuf {
    let mut in_agent = false;
    for line in config.lines().map(str::trim) {
        if line.starts_with('[') {
            in_agent = line == "[agent]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if in_agent && key.trim() == "bpf_pin_dir" {
            let value = value.split('#').next().unwrap_or_default().trim();
            return PathBuf::from(value.trim_matches(|c| c == '"' || c == '\''));
        }
    }
    PathBuf::from(DEFAULT_PIN_DIR)
}

/// What `systemctl disable` does for our [Install] section: remove the
/// `WantedBy=` symlinks. Done by hand so that it works on any root and
/// without a running systemd.
fn disable(layout: &Layout) -> Result<()> {
    let dir = layout.path(UNIT_DIR);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.ends_with(".wants") || name.ends_with(".requires")) {
            continue;
        }
        let link = entry.path().join(UNIT);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("remove {}", link.display()))?;
            println!("removed {} (disabled)", link.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_dir_is_read_from_the_agent_section_only() {
        assert_eq!(pin_dir_of(""), Path::new(DEFAULT_PIN_DIR));
        let deploy = include_str!("../../deploy/xban.toml");
        assert_eq!(pin_dir_of(deploy), Path::new(DEFAULT_PIN_DIR));
        let own = "[agent]\nbpf_pin_dir = \"/sys/fs/bpf/xban-stage\"  # staging\n";
        assert_eq!(pin_dir_of(own), Path::new("/sys/fs/bpf/xban-stage"));
        let elsewhere = "[agent]\nsocket = \"/run/x.sock\"\n[jails.x]\nbpf_pin_dir = \"/nope\"\n";
        assert_eq!(pin_dir_of(elsewhere), Path::new(DEFAULT_PIN_DIR));
    }
}
