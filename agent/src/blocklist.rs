//! Permanent blocklist files, in the format operators already keep: one
//! address or CIDR per line, `#` starts a comment.
//!
//! Their entries are permanent bans under the jail name `blocklist`; the
//! files are the source of truth, so they are re-read whenever they change
//! and entries removed from a file are unbanned.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::addr::Target;

/// The jail name of blocklist bans.
pub const BLOCKLIST_JAIL: &str = "blocklist";

/// A line that is neither an address, a prefix, a comment nor blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

/// Parse one file's text.
pub fn parse(path: &Path, text: &str) -> (Vec<Target>, Vec<BadLine>) {
    parse_bytes(path, text.as_bytes())
}

/// Parse one file's bytes, line by line: a line that is not UTF-8 (or not an
/// address) is skipped alone; bytes after `#` are a comment whatever they are.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> (Vec<Target>, Vec<BadLine>) {
    let mut targets = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let entry = raw.split(|&b| b == b'#').next().unwrap_or_default();
        let entry = match std::str::from_utf8(entry) {
            Ok(e) => e.trim(),
            Err(_) => {
                bad.push(BadLine {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: "not UTF-8 text".into(),
                });
                continue;
            }
        };
        if entry.is_empty() {
            continue;
        }
        match entry.parse::<Target>() {
            Ok(t) => targets.push(t),
            Err(e) => bad.push(BadLine {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            }),
        }
    }
    (targets, bad)
}

/// File identity, size and time: any change means "read it again".
type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// A changed file is read once it has not changed for this long, so a file
/// rewritten in place is never read half-written (a rename into place is
/// complete at once and read after the same pause).
#[cfg(not(test))]
pub const QUIET: Duration = Duration::from_secs(2);
#[cfg(test)]
pub const QUIET: Duration = Duration::from_millis(200);

/// One configured file and what was last read from it.
#[derive(Debug, Default)]
struct ListFile {
    path: PathBuf,
    /// The stamp of the last read (successful or not).
    loaded: Stamp,
    /// `None` until read once.
    entries: Option<Vec<Target>>,
    /// A change seen, and since when it has stayed as it is.
    pending: Option<(Stamp, Instant)>,
    bad_lines: usize,
    /// The last read failed: the entries are from the read before.
    unreadable: bool,
    read_at: Option<Instant>,
}

/// An unreadable file is tried again this often (a permission fix changes
/// no stamp).
const UNREADABLE_RETRY: Duration = Duration::from_secs(30);

/// Whether the blocklist files are read as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlocklistHealth {
    /// Lines skipped (not an address or prefix, not UTF-8), all files.
    pub bad_lines: usize,
    /// Files whose last read failed; their previous entries are kept.
    pub unreadable_files: Vec<PathBuf>,
}

/// The configured files and what was last read from them.
#[derive(Debug, Default)]
pub struct Blocklists {
    files: Vec<ListFile>,
    paths: Vec<PathBuf>,
}

/// Bad lines logged per file and read; the rest are only counted.
const BAD_LINES_LOGGED: usize = 20;

impl Blocklists {
    pub fn new(files: Vec<PathBuf>) -> Blocklists {
        Blocklists {
            files: files
                .iter()
                .map(|p| ListFile {
                    path: p.clone(),
                    ..Default::default()
                })
                .collect(),
            paths: files,
        }
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.paths
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Is a changed file ready to be read again (quiet for [`QUIET`])? A
    /// file never read yet is ready at once.
    pub fn changed(&mut self) -> bool {
        let now = Instant::now();
        let mut ready = false;
        for f in &mut self.files {
            let st = stamp(&f.path);
            if f.entries.is_none()
                || (f.unreadable && f.read_at.is_some_and(|t| t.elapsed() >= UNREADABLE_RETRY))
            {
                ready = true;
                continue;
            }
            if st == f.loaded {
                f.pending = None;
                continue;
            }
            match f.pending {
                Some((seen, since)) if seen == st => {
                    if now.duration_since(since) >= QUIET {
                        ready = true;
                    }
                }
                _ => f.pending = Some((st, now)),
            }
        }
        ready
    }

    /// Read every file: the union of their entries, and the lines skipped. A
    /// missing file holds nothing (it may be created later); a file that
    /// cannot be read keeps the entries of its last good read.
    pub fn load(&mut self) -> (BTreeSet<Target>, Vec<BadLine>) {
        let mut all = BTreeSet::new();
        let mut bad = Vec::new();
        for f in &mut self.files {
            f.loaded = stamp(&f.path);
            f.pending = None;
            f.read_at = Some(Instant::now());
            match std::fs::read(&f.path) {
                Ok(bytes) => {
                    let (targets, b) = parse_bytes(&f.path, &bytes);
                    f.entries = Some(targets);
                    f.bad_lines = b.len();
                    f.unreadable = false;
                    bad.extend(b);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    f.entries = Some(Vec::new());
                    f.bad_lines = 0;
                    f.unreadable = false;
                }
                Err(e) => {
                    let kept = f.entries.as_ref().map_or(0, Vec::len);
                    tracing::error!(
                        "blocklist {}: cannot read: {e}: its {kept} entries from the last read are kept; fix the file's permissions or storage",
                        f.path.display()
                    );
                    f.unreadable = true;
                    f.entries.get_or_insert_with(Vec::new);
                }
            }
            all.extend(f.entries.iter().flatten().copied());
        }
        (all, bad)
    }

    pub fn health(&self) -> BlocklistHealth {
        BlocklistHealth {
            bad_lines: self.files.iter().map(|f| f.bad_lines).sum(),
            unreadable_files: self
                .files
                .iter()
                .filter(|f| f.unreadable)
                .map(|f| f.path.clone())
                .collect(),
        }
    }

    /// Log the bad lines of a read: each one, up to a bound per file.
    pub fn warn_bad_lines(bad: &[BadLine]) {
        let mut per_file: std::collections::HashMap<&Path, usize> = Default::default();
        for b in bad {
            let n = per_file.entry(&b.path).or_default();
            *n += 1;
            if *n <= BAD_LINES_LOGGED {
                tracing::warn!(
                    "blocklist {}:{}: {} (line skipped)",
                    b.path.display(),
                    b.line,
                    b.message
                );
            }
        }
        for (path, n) in per_file {
            if n > BAD_LINES_LOGGED {
                tracing::warn!(
                    "blocklist {}: {} more bad lines skipped (counted in xban_blocklist_bad_lines)",
                    path.display(),
                    n - BAD_LINES_LOGGED
                );
            }
        }
    }

    /// Append a permanent ban to the first file, with a dated comment.
    pub fn append(&self, target: &Target, comment: &str) -> Result<Option<PathBuf>> {
        let Some(path) = self.paths.first() else {
            return Ok(None);
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open blocklist {} for appending", path.display()))?;
        let when = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
        writeln!(f, "{target}  # {when} {comment}")
            .with_context(|| format!("append to blocklist {}", path.display()))?;
        Ok(Some(path.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_prefixes_and_comments() {
        let text = "# my list\n203.0.113.7\n198.51.100.0/24   # a whole net\n\n2001:db8::/48\n  ::ffff:203.0.113.8 \nnot-an-ip\n10.0.0.0/99\n";
        let (t, bad) = parse(Path::new("/x"), text);
        let t: Vec<String> = t.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            t,
            [
                "203.0.113.7",
                "198.51.100.0/24",
                "2001:db8::/48",
                "203.0.113.8"
            ]
        );
        assert_eq!(bad.len(), 2);
        assert_eq!((bad[0].line, bad[1].line), (7, 8));
        assert!(bad[0].message.contains("not-an-ip"));
    }

    #[test]
    fn reload_sees_changes_and_append_writes_a_dated_line() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let b = dir.path().join("missing.txt");
        std::fs::write(&a, "203.0.113.1\n").unwrap();
        let mut lists = Blocklists::new(vec![a.clone(), b.clone()]);
        assert!(lists.changed(), "never read yet");
        let (set, bad) = lists.load();
        assert_eq!(set.len(), 1);
        assert!(bad.is_empty());
        assert!(!lists.changed());
        std::fs::write(&b, "203.0.113.2\n203.0.113.1\n").unwrap();
        assert!(!lists.changed(), "read once quiet, not at once");
        std::thread::sleep(QUIET);
        assert!(lists.changed(), "a new file appeared");
        assert_eq!(lists.load().0.len(), 2, "union, without duplicates");
        lists
            .append(&"198.51.100.9".parse().unwrap(), "jail=sshd permanent")
            .unwrap();
        assert!(!lists.changed());
        std::thread::sleep(QUIET);
        assert!(lists.changed());
        let text = std::fs::read_to_string(&a).unwrap();
        let last = text.lines().last().unwrap();
        assert!(
            last.starts_with("198.51.100.9  # 20") && last.ends_with("jail=sshd permanent"),
            "{last}"
        );
        assert_eq!(lists.load().0.len(), 3);
    }

    #[test]
    fn a_bad_byte_or_line_skips_only_that_line() {
        let bytes = b"203.0.113.1  # caf\xe9 \xff\n\xfe\xfe\n198.51.100.0/24\nnope\n";
        let (t, bad) = parse_bytes(Path::new("/l"), bytes);
        let t: Vec<String> = t.iter().map(|t| t.to_string()).collect();
        assert_eq!(t, ["203.0.113.1", "198.51.100.0/24"]);
        assert_eq!(
            bad.iter().map(|b| b.line).collect::<Vec<_>>(),
            [2, 4],
            "file:line of each bad line"
        );
        assert!(bad[0].message.contains("UTF-8"));
    }

    #[test]
    fn an_unreadable_file_keeps_its_entries_and_a_rewrite_is_read_once_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        std::fs::write(&a, "203.0.113.1\n203.0.113.2\n").unwrap();
        let mut lists = Blocklists::new(vec![a.clone()]);
        assert!(lists.changed());
        assert_eq!(lists.load().0.len(), 2);
        // The path now names something that cannot be read as a file.
        std::fs::remove_file(&a).unwrap();
        std::fs::create_dir(&a).unwrap();
        std::thread::sleep(QUIET);
        lists.changed();
        std::thread::sleep(QUIET);
        assert!(lists.changed());
        assert_eq!(lists.load().0.len(), 2, "previous entries kept");
        assert_eq!(lists.health().unreadable_files, vec![a.clone()]);
        std::fs::remove_dir(&a).unwrap();

        // A rewrite in place, half done: nothing is read while it changes.
        std::fs::write(&a, "203.0.113.1\n").unwrap();
        assert!(!lists.changed());
        std::thread::sleep(QUIET / 2);
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&a).unwrap();
            f.write_all(b"203.0.113.2\n203.0.113.3\n").unwrap();
        }
        assert!(!lists.changed(), "still being written");
        std::thread::sleep(QUIET / 2);
        assert!(
            !lists.changed(),
            "not quiet long enough since the last write"
        );
        std::thread::sleep(QUIET);
        assert!(lists.changed());
        let (set, _) = lists.load();
        assert_eq!(set.len(), 3, "read whole");
        assert!(lists.health().unreadable_files.is_empty());
    }
}
