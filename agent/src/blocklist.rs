//! Permanent blocklist files, in the format operators already keep: one
//! address or CIDR per line, `#` starts a comment.
//!
//! Their entries are permanent bans under the jail name `blocklist`; the
//! files are the source of truth, so they are re-read whenever they change
//! and entries removed from a file are unbanned.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

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
    let mut targets = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let entry = raw.split('#').next().unwrap_or("").trim();
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

/// File identity and size: any change means "read it again".
type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// The configured files and what was last read from them.
#[derive(Debug, Default)]
pub struct Blocklists {
    files: Vec<PathBuf>,
    stamps: Vec<Stamp>,
}

impl Blocklists {
    pub fn new(files: Vec<PathBuf>) -> Blocklists {
        let stamps = vec![None; files.len()];
        Blocklists { files, stamps }
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Has any file changed since the last `load`?
    pub fn changed(&self) -> bool {
        self.files
            .iter()
            .zip(&self.stamps)
            .any(|(f, s)| stamp(f) != *s)
    }

    /// Read every file: the union of their entries, and the lines skipped. A
    /// missing file holds nothing (it may be created later).
    pub fn load(&mut self) -> (BTreeSet<Target>, Vec<BadLine>) {
        let mut all = BTreeSet::new();
        let mut bad = Vec::new();
        for (i, f) in self.files.iter().enumerate() {
            self.stamps[i] = stamp(f);
            let text = match std::fs::read_to_string(f) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    bad.push(BadLine {
                        path: f.clone(),
                        line: 0,
                        message: format!("cannot read: {e}"),
                    });
                    continue;
                }
            };
            let (targets, b) = parse(f, &text);
            all.extend(targets);
            bad.extend(b);
        }
        (all, bad)
    }

    /// Append a permanent ban to the first file, with a dated comment.
    pub fn append(&self, target: &Target, comment: &str) -> Result<Option<PathBuf>> {
        let Some(path) = self.files.first() else {
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
        assert!(lists.changed(), "a new file appeared");
        assert_eq!(lists.load().0.len(), 2, "union, without duplicates");
        lists
            .append(&"198.51.100.9".parse().unwrap(), "jail=sshd permanent")
            .unwrap();
        assert!(lists.changed());
        let text = std::fs::read_to_string(&a).unwrap();
        let last = text.lines().last().unwrap();
        assert!(
            last.starts_with("198.51.100.9  # 20") && last.ends_with("jail=sshd permanent"),
            "{last}"
        );
        assert_eq!(lists.load().0.len(), 3);
    }
}
