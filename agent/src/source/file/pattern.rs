//! Log patterns: a directory and a file name or file-name glob, the
//! directories watched for them, and where symlinks point.
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

use crate::source::SourceError;

/// One configured pattern, split into its directory and file-name matcher.
#[derive(Debug)]
pub(super) struct Pattern {
    pub(super) raw: String,
    pub(super) dir: PathBuf,
    pub(super) name: NameMatch,
}

#[derive(Debug, Clone)]
pub(super) enum NameMatch {
    Exact(OsString),
    Glob(GlobMatcher),
}

impl NameMatch {
    pub(super) fn matches(&self, name: &OsStr) -> bool {
        match self {
            NameMatch::Exact(n) => n == name,
            NameMatch::Glob(g) => g.is_match(Path::new(name)),
        }
    }
}

pub(super) fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// A log pattern taken apart, for the start-up pre-flight and `xban check`.
pub(crate) struct PatternParts {
    pub dir: PathBuf,
    /// The literal file name; `None` for a glob.
    pub exact: Option<OsString>,
    /// Does a file name in `dir` match?
    pub matches: Box<dyn Fn(&OsStr) -> bool>,
}

/// `raw` taken apart, or the error [`FileSource::spawn`] would give for it.
pub(crate) fn pattern_parts(raw: &str) -> Result<PatternParts, SourceError> {
    let p = parse_pattern(raw)?;
    let exact = match &p.name {
        NameMatch::Exact(n) => Some(n.clone()),
        NameMatch::Glob(_) => None,
    };
    let name = p.name;
    Ok(PatternParts {
        dir: p.dir,
        exact,
        matches: Box::new(move |n: &OsStr| name.matches(n)),
    })
}

pub(super) fn parse_pattern(raw: &str) -> Result<Pattern, SourceError> {
    let no_name = || SourceError::NoFileName {
        pattern: raw.to_string(),
    };
    // `Path` would read "/var/log/" as the file "log" in "/var".
    if raw.ends_with('/') || raw.ends_with("/.") || raw == "." {
        return Err(no_name());
    }
    let path = Path::new(raw);
    let name = path.file_name().ok_or_else(no_name)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if has_glob(&dir.to_string_lossy()) {
        return Err(SourceError::GlobInDirectory {
            pattern: raw.to_string(),
        });
    }
    let name_str = name.to_string_lossy();
    let name = if has_glob(&name_str) {
        let glob = GlobBuilder::new(&name_str)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|source| SourceError::InvalidGlob {
                pattern: raw.to_string(),
                source,
            })?;
        NameMatch::Glob(glob.compile_matcher())
    } else {
        NameMatch::Exact(name.to_os_string())
    };
    Ok(Pattern {
        raw: raw.to_string(),
        dir,
        name,
    })
}

#[derive(Debug)]
pub(super) struct WatchedDir {
    pub(super) path: PathBuf,
    pub(super) names: Vec<NameMatch>,
}

impl WatchedDir {
    pub(super) fn matches(&self, name: &OsStr) -> bool {
        self.names.iter().any(|m| m.matches(name))
    }
}

/// Paths of the entries of `dir` matching `names`, sorted. Only names are
/// checked here; whether each is a regular file is decided when opening.
pub(super) async fn list_matching(dir: &Path, names: &[NameMatch]) -> io::Result<Vec<PathBuf>> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut found = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name();
        if !names.iter().any(|m| m.matches(&name)) {
            continue;
        }
        let path = dir.join(&name);
        // Follows symlinks (see `warn_if_linked_elsewhere`).
        if matches!(tokio::fs::metadata(&path).await, Ok(m) if m.is_file()) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Where a symlink at `path` finally points (through up to 40 links), with
/// its directory made canonical; `None` when `path` is no symlink. The
/// target need not exist yet.
pub(super) fn symlink_target(path: &Path) -> Option<PathBuf> {
    let mut p = path.to_path_buf();
    let mut hops = 0;
    loop {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {}
            Ok(_) => break,
            Err(_) if hops > 0 => break,
            Err(_) => return None,
        }
        let t = std::fs::read_link(&p).ok()?;
        p = if t.is_absolute() {
            t
        } else {
            p.parent().unwrap_or(Path::new(".")).join(t)
        };
        hops += 1;
        if hops > 40 {
            return None;
        }
    }
    if hops == 0 {
        return None;
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = p.file_name()?.to_os_string();
    Some(std::fs::canonicalize(&dir).unwrap_or(dir).join(name))
}
