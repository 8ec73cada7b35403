//! One agent per pin directory and per state directory.
//!
//! Two agents sharing pins or a database would each reconcile the kernel to
//! their own view and undo the other's bans. Each directory is locked with
//! `flock(2)` on the directory itself (bpffs holds no regular files, so a lock
//! file is not possible there); the lock goes with the process, also on
//! `kill -9`. A refused agent names the holder, found in `/proc/locks`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A held directory lock; released when dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{what} {path} is in use by another xban agent ({holder}): two agents on the same {what} \
         would undo each other's bans; stop that agent first (systemctl stop xban), or give this \
         one its own [agent] {key}"
    )]
    Held {
        what: &'static str,
        key: &'static str,
        path: PathBuf,
        holder: String,
    },
    #[error("cannot lock {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Take the lock on `path` (a directory), `what`/`key` naming it in errors
/// (e.g. "pin directory", "bpf_pin_dir").
pub fn lock_dir(path: &Path, what: &'static str, key: &'static str) -> Result<DirLock, LockError> {
    let io = |source| LockError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    // std opens with O_CLOEXEC: commands the agent runs do not inherit it.
    let dir = File::open(path).map_err(io)?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let holder = dir
                .metadata()
                .ok()
                .and_then(|m| holder_of(m.dev(), m.ino()))
                .unwrap_or_else(|| "pid unknown".to_string());
            return Err(LockError::Held {
                what,
                key,
                path: path.to_path_buf(),
                holder,
            });
        }
        return Err(io(err));
    }
    Ok(DirLock {
        _dir: dir,
        path: path.to_path_buf(),
    })
}

/// "pid N, `cmdline`" of the process holding a flock on dev/ino, if any.
fn holder_of(dev: u64, ino: u64) -> Option<String> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = find_flock_holder(&locks, libc::major(dev), libc::minor(dev), ino)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Some(if cmdline.is_empty() {
        format!("pid {pid}")
    } else {
        format!("pid {pid}, `{cmdline}`")
    })
}

/// The pid of a FLOCK line of `/proc/locks` on `major:minor:ino` (hex
/// device numbers, decimal inode).
fn find_flock_holder(locks: &str, major: u32, minor: u32, ino: u64) -> Option<u32> {
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 17805 00:28:45922 0 EOF"; blocked
        // waiters have "->" as an extra field after the number.
        let f: Vec<&str> = f.into_iter().filter(|s| *s != "->").collect();
        if f.get(1) != Some(&"FLOCK") {
            return None;
        }
        let mut id = f.get(5)?.split(':');
        let (ma, mi, i) = (id.next()?, id.next()?, id.next()?);
        (u32::from_str_radix(ma, 16).ok()? == major
            && u32::from_str_radix(mi, 16).ok()? == minor
            && i.parse::<u64>().ok()? == ino)
            .then(|| f[4].parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path(), "state directory", "state_dir").unwrap();
        // A second open file description conflicts, as another process would.
        let e = lock_dir(dir.path(), "state directory", "state_dir").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "names the holder: {msg}"
        );
        assert!(msg.contains("state_dir"), "{msg}");
        drop(first);
        lock_dir(dir.path(), "state directory", "state_dir").expect("free once released");
    }

    #[test]
    fn proc_locks_lines_are_parsed() {
        let text = "1: FLOCK  ADVISORY  WRITE 17777 fe:00:2719745 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 17805 00:28:45922 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 17900 00:28:45922 0 EOF\n\
                    3: POSIX  ADVISORY  WRITE 17738 00:28:45923 0 EOF\n";
        assert_eq!(find_flock_holder(text, 0, 0x28, 45922), Some(17805));
        assert_eq!(find_flock_holder(text, 0xfe, 0, 2719745), Some(17777));
        assert_eq!(find_flock_holder(text, 0, 0x28, 45923), None, "POSIX");
    }
}
