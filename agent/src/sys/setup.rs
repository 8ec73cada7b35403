//! Privileged set-up, gathered in one place: the capability check, the bpffs
//! mount, and the agent's directories.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::sys::paths;

/// bpffs's magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The agent needs CAP_BPF and CAP_NET_ADMIN (and CAP_SYS_ADMIN to mount
/// bpffs); checking the effective set up front gives one clear message
/// instead of an EPERM deep inside the loader.
pub fn check_capabilities() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap_or(0))
        .unwrap_or(0);
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_BPF: u64 = 39;
    let has = |c: u64| eff & (1 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !missing.is_empty() {
        bail!(
            "xban needs {} to load and attach its XDP program: run it as root (sudo xban run ...) or from its systemd unit",
            missing.join(" and ")
        );
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Make sure `pin_dir` lives on bpffs, mounting bpffs at /sys/fs/bpf when the
/// system has not (fresh machines and minimal containers don't).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    // A nested pin directory (`/sys/fs/bpf/a/b`) is created whole: what
    // counts is the nearest part of it that exists.
    let nearest = |p: &Path| -> PathBuf {
        p.ancestors()
            .skip(1)
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"))
            .to_path_buf()
    };
    let parent = nearest(pin_dir);
    if is_bpffs(&parent) || is_bpffs(pin_dir) {
        return Ok(());
    }
    let mount = Path::new(paths::BPFFS_MOUNT);
    if pin_dir.starts_with(mount) && !is_bpffs(mount) {
        std::fs::create_dir_all(mount).with_context(|| format!("create {}", mount.display()))?;
        nix::mount::mount(
            Some("bpf"),
            mount,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .with_context(|| {
            format!(
                "mount bpffs at {} (try: mount -t bpf bpf {})",
                mount.display(),
                mount.display()
            )
        })?;
        tracing::info!(mount = %mount.display(), "mounted bpffs");
    }
    let parent = nearest(pin_dir);
    if !is_bpffs(&parent) {
        bail!(
            "[agent] bpf_pin_dir: {} is not on a bpffs mount: set bpf_pin_dir under /sys/fs/bpf, or mount bpffs there (mount -t bpf bpf {})",
            pin_dir.display(),
            parent.display()
        );
    }
    Ok(())
}

/// Create a directory (and parents) with owner-only permissions.
pub fn private_dir(path: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("create directory {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// Raise the soft limit on open files to the hard one: log files, the
/// database, sockets and maps all take descriptors, and 1,024 (the usual
/// soft default) is little for a host with many logs. Returns the limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            tracing::warn!(
                "cannot raise the open-file limit from {} to {}: {}",
                lim.rlim_cur,
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
            return lim.rlim_cur;
        }
        return lim.rlim_max;
    }
    lim.rlim_cur
}
