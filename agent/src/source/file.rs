//! Following log files with inotify watches on their parent directories.
//!
//! Watching directories rather than files makes rotation and globs natural:
//! a renamed, recreated, truncated or newly matching file shows up as an
//! event on its directory, whatever happened to the old inode.
//!
//! Start-up, per matching file:
//! * no resume entry: start at the end (old history is not re-banned); if the
//!   file ends in a partial line, start at that line so it is read whole once
//!   its newline arrives;
//! * resume entry with the same dev+inode and size >= offset: resume at offset,
//!   so lines written while the agent was down are read;
//! * same inode but size < offset: truncated while down, read from 0;
//! * different inode: rotated while down. The new file is read from 0 (it
//!   only holds lines written after the rotation), and if the old inode is
//!   still in the directory (e.g. as `auth.log.1`) its rest is read first.
//!
//! While running, a file that appears (created, renamed into place, newly
//! matching a glob) is read from its start. A followed path whose file is
//! renamed away or deleted keeps its open handle: the old file is read to
//! its end before the replacement, and drained of lines its writer appends
//! before reopening, until it is unlinked or, once its replacement has data,
//! has been quiet for a grace period.
//!
//! A followed path that is a symlink (or is replaced by one: rotation by
//! swapping a link to a new file) is followed to its target: the target's
//! directory is watched too, so writes to the target are seen wherever it
//! lives.
//!
//! Content already read is not read again when it reappears under another
//! followed name: each file's first line is fingerprinted (as fail2ban
//! keeps a hash of it), and a file that is overwritten in place (a rotated
//! name rewritten by a copy) or appears with the same first line as content
//! read before is skipped up to where that content was read. A file whose
//! first line changed under the reader is read from its start again. Two
//! different logs that start with the same line (a constant header) are
//! taken for the same content; such logs should be followed by a pattern
//! that does not match their rotated copies.

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{FutureExt, StreamExt};
use globset::{GlobBuilder, GlobMatcher};
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::line::{decode, LineAssembler, LineKind};
use super::{FileProgress, LineEnd, SourceError, SourceLine, SourceStats};

/// Default for [`FileSourceOptions::max_line_bytes`].
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// A first line longer than this is fingerprinted by its first this-many bytes.
const FINGERPRINT_MAX: usize = 4096;
/// Fingerprints of content read, remembered at most (then forgotten at once).
const MAX_SEEN: usize = 4096;
/// inotify events processed as one batch, bounding the work between reads.
const MAX_BATCH: usize = 1024;
/// A rotated-away file whose replacement has data is closed once it has
/// been quiet this long. Not at once: inotify may deliver the MOVED_TO of
/// a rename (to a name we also follow) a batch after its MOVED_FROM, and
/// the file must then still be known, or it would be read again from 0.
#[cfg(not(test))]
const RETIRED_GRACE: Duration = Duration::from_secs(30);
/// Short in tests so closing can be observed; still far above a batch.
#[cfg(test)]
const RETIRED_GRACE: Duration = Duration::from_millis(500);

/// Where we are in a file; persist it to resume after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilePosition {
    pub dev: u64,
    pub inode: u64,
    /// Just past the last line delivered (never inside a line we hold).
    pub offset: u64,
}

#[derive(Debug, Clone)]
pub struct FileSourceOptions {
    /// Paths or file-name globs (`/var/log/nginx/*.log`).
    pub patterns: Vec<String>,
    /// Positions remembered from a previous run.
    pub resume: HashMap<PathBuf, FilePosition>,
    /// Longer lines are truncated to this, counted, and logged once per file.
    pub max_line_bytes: usize,
}

impl Default for FileSourceOptions {
    fn default() -> Self {
        Self {
            patterns: Vec::new(),
            resume: HashMap::new(),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }
}

/// Handle on the task following the files.
#[derive(Debug)]
pub struct FileSource {
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// State the task publishes for the handle.
#[derive(Debug, Default)]
struct Shared {
    followed: Mutex<HashMap<PathBuf, Followed>>,
    stats: Arc<SourceStats>,
}

#[derive(Debug, Clone)]
struct Followed {
    id: FileId,
    progress: Arc<FileProgress>,
}

impl FileSource {
    /// Starts following; lines go to `tx`. Returns once every existing file is
    /// opened and watched, so that a line appended after `spawn` returns is
    /// never missed. Reading (also of a resumed backlog) happens in the
    /// background task, so `spawn` never waits on the channel.
    pub async fn spawn(
        opts: FileSourceOptions,
        tx: mpsc::Sender<SourceLine>,
    ) -> Result<FileSource, SourceError> {
        let patterns = opts
            .patterns
            .iter()
            .map(|p| parse_pattern(p))
            .collect::<Result<Vec<_>, _>>()?;

        let (inotify, dirs) = watch_directories(&patterns).await?;
        let events = inotify
            .into_event_stream([0u8; 4096])
            .map_err(|source| SourceError::Inotify { source })?;
        let watches = events.watches();

        let shared = Arc::new(Shared::default());
        let stats = shared.stats.clone();
        let max_line = opts.max_line_bytes.max(1);
        let mut active = HashMap::new();
        let mut retired = Vec::new();
        let mut dir_list: Vec<&WatchedDir> = dirs.values().collect();
        dir_list.sort_by(|a, b| a.path.cmp(&b.path));
        for dir in dir_list {
            let found = list_matching(&dir.path, &dir.names)
                .await
                .map_err(|source| SourceError::ReadDir {
                    dir: dir.path.clone(),
                    source,
                })?;
            for path in found {
                if active.contains_key(&path) {
                    continue;
                }
                let resume = opts.resume.get(&path);
                let t = open_existing(&path, resume, max_line, &stats, &mut retired)
                    .await
                    .map_err(|source| SourceError::Open {
                        path: path.clone(),
                        source,
                    })?;
                active.insert(path, t);
            }
            for name in &dir.names {
                let NameMatch::Exact(name) = name else {
                    continue;
                };
                let path = dir.path.join(name);
                if active.contains_key(&path) {
                    continue;
                }
                warn!(path = %path.display(),
                    "log file does not exist yet; it will be read from its start when it appears");
                if let Some(pos) = opts.resume.get(&path) {
                    retired.extend(open_predecessor(&path, pos, max_line).await);
                }
            }
        }
        // A glob that also matches rotated names (`auth.log*`) follows the
        // predecessor under its own name already: continue it there from the
        // remembered offset rather than reading it through two handles.
        let mut i = 0;
        while i < retired.len() {
            let r = &retired[i];
            match active.values_mut().find(|a| a.id == r.id) {
                Some(a) => {
                    let (offset, path) = (r.read_offset, a.path.clone());
                    a.seek(Start::At(offset))
                        .await
                        .map_err(|source| SourceError::Open { path, source })?;
                    retired.remove(i);
                }
                None => i += 1,
            }
        }

        let follower = Follower {
            ctx: Ctx {
                tx,
                stats,
                buf: vec![0; READ_CHUNK].into_boxed_slice(),
                max_line,
                seen: HashMap::new(),
                warnings: crate::ratelimit::WarnLimiter::default(),
            },
            shared: shared.clone(),
            dirs,
            watches,
            links: HashMap::new(),
            active,
            retired,
        };
        follower.publish();

        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            tokio::select! {
                // Also taken when the handle is dropped without `shutdown`.
                _ = stop_rx => debug!("file source stopped"),
                r = follower.run(events) => {
                    if r.is_err() {
                        debug!("line receiver closed; file source stops");
                    }
                }
            }
        });
        Ok(FileSource { shared, stop, task })
    }

    /// Current offsets (just past the last line the consumer marked
    /// [processed](SourceLine::processed)), for persisting.
    pub fn positions(&self) -> HashMap<PathBuf, FilePosition> {
        self.followed()
            .into_iter()
            .map(|(path, f)| {
                let pos = FilePosition {
                    dev: f.id.dev,
                    inode: f.id.ino,
                    offset: f.progress.offset(),
                };
                (path, pos)
            })
            .collect()
    }

    /// Files being followed now.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.followed().into_keys().collect();
        files.sort();
        files
    }

    pub fn stats(&self) -> Arc<SourceStats> {
        self.shared.stats.clone()
    }

    /// Stops the task; lines not yet processed are not in
    /// [`positions`](Self::positions), so a resume re-reads them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            if e.is_panic() {
                error!("file source task panicked: {e}");
            }
        }
    }

    fn followed(&self) -> HashMap<PathBuf, Followed> {
        self.shared
            .followed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Checks each pattern's directory and watches it. Watching comes before
/// opening any file: a change between opening and watching would otherwise
/// go unnoticed.
async fn watch_directories(
    patterns: &[Pattern],
) -> Result<(Inotify, HashMap<WatchDescriptor, WatchedDir>), SourceError> {
    let inotify = Inotify::init().map_err(|source| SourceError::Inotify { source })?;
    let mut watches = inotify.watches();
    let mut dirs: HashMap<WatchDescriptor, WatchedDir> = HashMap::new();
    for p in patterns {
        match tokio::fs::metadata(&p.dir).await {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(SourceError::NotADirectory {
                    dir: p.dir.clone(),
                    pattern: p.raw.clone(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SourceError::DirectoryMissing {
                    dir: p.dir.clone(),
                    pattern: p.raw.clone(),
                })
            }
            Err(source) => {
                return Err(SourceError::ReadDir {
                    dir: p.dir.clone(),
                    source,
                })
            }
        }
        let wd = watches
            .add(&p.dir, dir_watch_mask())
            .map_err(|source| SourceError::Watch {
                dir: p.dir.clone(),
                source,
            })?;
        // Same directory (or the same inode by another path) from several
        // patterns: inotify hands back the same descriptor.
        dirs.entry(wd)
            .or_insert_with(|| WatchedDir {
                path: p.dir.clone(),
                names: Vec::new(),
            })
            .names
            .push(p.name.clone());
    }
    Ok((inotify, dirs))
}

/// Opens a file present at start and positions it by the start-up rules
/// (module docs). A predecessor found for a file rotated while we were
/// down is added to `retired`, to be read first.
async fn open_existing(
    path: &Path,
    resume: Option<&FilePosition>,
    max_line: usize,
    stats: &SourceStats,
    retired: &mut Vec<Tailer>,
) -> io::Result<Tailer> {
    let mut t = Tailer::open(path, max_line).await?;
    let start = match resume {
        None => Start::End,
        Some(pos) if pos.dev == t.id.dev && pos.inode == t.id.ino => {
            let size = t.size().await?;
            if size >= pos.offset {
                Start::At(pos.offset)
            } else {
                SourceStats::bump(&stats.truncations, 1);
                info!(path = %path.display(), offset = pos.offset, size,
                    "log file shrank while the agent was stopped; reading it from the start");
                Start::At(0)
            }
        }
        Some(pos) => {
            SourceStats::bump(&stats.rotations, 1);
            info!(path = %path.display(),
                "log file was rotated while the agent was stopped; reading the new file from the start");
            retired.extend(open_predecessor(path, pos, max_line).await);
            Start::At(0)
        }
    };
    t.seek(start).await?;
    Ok(t)
}

fn dir_watch_mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::CREATE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE
        | WatchMask::CLOSE_WRITE
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// One configured pattern, split into its directory and file-name matcher.
#[derive(Debug)]
struct Pattern {
    raw: String,
    dir: PathBuf,
    name: NameMatch,
}

#[derive(Debug, Clone)]
enum NameMatch {
    Exact(OsString),
    Glob(GlobMatcher),
}

impl NameMatch {
    fn matches(&self, name: &OsStr) -> bool {
        match self {
            NameMatch::Exact(n) => n == name,
            NameMatch::Glob(g) => g.is_match(Path::new(name)),
        }
    }
}

fn has_glob(s: &str) -> bool {
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

fn parse_pattern(raw: &str) -> Result<Pattern, SourceError> {
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
struct WatchedDir {
    path: PathBuf,
    names: Vec<NameMatch>,
}

impl WatchedDir {
    fn matches(&self, name: &OsStr) -> bool {
        self.names.iter().any(|m| m.matches(name))
    }
}

/// Paths of the entries of `dir` matching `names`, sorted. Only names are
/// checked here; whether each is a regular file is decided when opening.
async fn list_matching(dir: &Path, names: &[NameMatch]) -> io::Result<Vec<PathBuf>> {
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
fn symlink_target(path: &Path) -> Option<PathBuf> {
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

/// A file's first line, hashed with its length: what identifies content
/// that reappears under another name or is overwritten in place.
type Fingerprint = (u64, usize);

/// What the start of a file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// No complete first line yet.
    Incomplete,
    /// An empty first line: nothing to recognise the content by.
    Unusable,
    Print(Fingerprint),
}

fn fingerprint(line: &[u8]) -> Fingerprint {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the same line hashes the same in every run.
    let mut h = std::hash::DefaultHasher::new();
    line.hash(&mut h);
    (h.finish(), line.len())
}

/// When a followed file was rotated while we were down, its old inode may
/// still be in the directory under another name: open it at the remembered
/// offset so its last lines are read (before the new file).
async fn open_predecessor(path: &Path, pos: &FilePosition, max_line: usize) -> Option<Tailer> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut entries = tokio::fs::read_dir(dir).await.ok()?;
    while let Ok(Some(entry)) = entries.next_entry().await {
        if entry.ino() != pos.inode {
            continue;
        }
        let old = entry.path();
        let mut t = match Tailer::open(&old, max_line).await {
            Ok(t) if t.id.dev == pos.dev && t.id.ino == pos.inode => t,
            _ => continue,
        };
        if t.size().await.ok()? < pos.offset {
            return None;
        }
        t.seek(Start::At(pos.offset)).await.ok()?;
        // Its lines belong to the log the operator configured, not to the rotated name.
        t.rename(path.to_path_buf());
        info!(path = %path.display(), rotated = %old.display(), offset = pos.offset,
            "reading the rest of the rotated log file first");
        return Some(t);
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Start {
    At(u64),
    End,
}

/// What the reading task needs besides the files.
struct Ctx {
    tx: mpsc::Sender<SourceLine>,
    stats: Arc<SourceStats>,
    buf: Box<[u8]>,
    max_line: usize,
    /// First-line fingerprint -> bytes of that content read (any file).
    seen: HashMap<Fingerprint, u64>,
    /// Warnings that could repeat for every event.
    warnings: crate::ratelimit::WarnLimiter,
}

/// The receiver was dropped: nobody wants lines any more.
struct Closed;

/// One open file being read.
struct Tailer {
    path: PathBuf,
    origin: Arc<str>,
    file: File,
    id: FileId,
    /// Bytes consumed from the file, including a partial line held in `asm`.
    read_offset: u64,
    /// How far the consumer got; shared with [`FileSource::positions`].
    progress: Arc<FileProgress>,
    asm: LineAssembler,
    max_line: usize,
    warned_long: bool,
    /// When data was last read, or the file was last retired.
    active_at: Instant,
    /// The first line's fingerprint, once known.
    head: Head,
    /// Read from 0 anew: compare the first line with content read before.
    check_head: bool,
    /// Lines ending at or before this offset were read already (under
    /// another name, or before an in-place overwrite): skip them.
    skip_until: u64,
    skipped: u64,
}

impl Tailer {
    /// Opens `path` at offset 0; the caller then [`seek`](Self::seek)s.
    async fn open(path: &Path, max_line: usize) -> io::Result<Tailer> {
        let file = File::open(path).await?;
        let meta = file.metadata().await?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(Tailer {
            path: path.to_path_buf(),
            origin: origin_of(path),
            file,
            id: FileId::of(&meta),
            read_offset: 0,
            progress: Arc::new(FileProgress::default()),
            asm: LineAssembler::new(max_line),
            max_line,
            warned_long: false,
            active_at: Instant::now(),
            head: Head::Incomplete,
            check_head: false,
            skip_until: 0,
            skipped: 0,
        })
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata().await?.len())
    }

    /// Positions the handle; any held partial line is dropped.
    async fn seek(&mut self, start: Start) -> io::Result<()> {
        self.asm.reset();
        let offset = match start {
            Start::At(offset) => offset,
            Start::End => {
                let (offset, mid_line) = self.end_start().await?;
                if mid_line {
                    self.asm.discard_until_newline();
                }
                offset
            }
        };
        self.file.seek(SeekFrom::Start(offset)).await?;
        self.read_offset = offset;
        self.progress.reset(offset);
        self.skip_until = 0;
        self.head = self.read_head().await?;
        // Read from the start: the content may be known under another name.
        self.check_head = offset == 0;
        Ok(())
    }

    /// Fingerprints the first line (the handle's position is kept).
    async fn read_head(&mut self) -> io::Result<Head> {
        let mut head = vec![0; FINGERPRINT_MAX];
        self.file.seek(SeekFrom::Start(0)).await?;
        let mut n = 0;
        while n < head.len() {
            match self.file.read(&mut head[n..]).await {
                Ok(0) => break,
                Ok(r) => n += r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.file.seek(SeekFrom::Start(self.read_offset)).await?;
        let head = &head[..n];
        Ok(match memchr::memchr(b'\n', head) {
            Some(0) => Head::Unusable,
            Some(i) => Head::Print(fingerprint(&head[..i])),
            None if n == FINGERPRINT_MAX => Head::Print(fingerprint(head)),
            None => Head::Incomplete,
        })
    }

    /// Before reading on: was the file overwritten in place (its first
    /// line changed), and is content read from the start known already?
    /// Returns false when reading must wait for a complete first line.
    async fn check_content(&mut self, ctx: &mut Ctx) -> io::Result<bool> {
        let mut now = self.read_head().await?;
        if let (Head::Print(before), false) = (self.head, self.check_head) {
            if now != Head::Print(before) && self.read_offset > 0 {
                SourceStats::bump(&ctx.stats.truncations, 1);
                info!(path = %self.path.display(),
                    "log file was overwritten in place (its first line changed); reading it from the start");
                self.seek(Start::At(0)).await?;
                now = self.head;
            }
        }
        if self.check_head {
            match now {
                Head::Incomplete => return Ok(false),
                Head::Unusable => {}
                Head::Print(fp) => {
                    if let Some(&known) = ctx.seen.get(&fp) {
                        if known > self.read_offset {
                            self.skip_until = known;
                            info!(path = %self.path.display(), bytes = known,
                                "log file starts with content already read (same first line); skipping what was read");
                        }
                    }
                }
            }
            self.check_head = false;
        }
        self.head = now;
        Ok(true)
    }

    /// Remembers how far this file's content has been read.
    fn note_seen(&self, ctx: &mut Ctx) {
        if let Head::Print(fp) = self.head {
            if ctx.seen.len() >= MAX_SEEN && !ctx.seen.contains_key(&fp) {
                ctx.seen.clear();
            }
            let done = self.progress.sent();
            let e = ctx.seen.entry(fp).or_insert(0);
            *e = (*e).max(done);
        }
    }

    /// Where to start a file read "from its end": after its last newline, so
    /// that a line being written right now is read whole when finished. If no
    /// newline is within the last `max_line` bytes, start at the end and skip
    /// to the next newline instead of emitting half a line.
    async fn end_start(&mut self) -> io::Result<(u64, bool)> {
        let size = self.size().await?;
        let window = size.min(self.max_line as u64);
        if window == 0 {
            return Ok((size, false));
        }
        let mut tail = vec![0; window as usize];
        self.file.seek(SeekFrom::Start(size - window)).await?;
        self.file.read_exact(&mut tail).await?;
        Ok(match tail.iter().rposition(|&b| b == b'\n') {
            Some(i) => (size - window + i as u64 + 1, false),
            None if window == size => (0, false),
            None => (size, true),
        })
    }

    fn rename(&mut self, path: PathBuf) {
        self.origin = origin_of(&path);
        self.path = path;
    }

    /// Reads to the end of the file through the open handle, sending every
    /// complete line. Awaits when the channel is full (backpressure).
    async fn pump(&mut self, ctx: &mut Ctx) -> Result<(), Closed> {
        // Size from the open handle: the path may already name another file.
        let size = match self.size().await {
            Ok(size) => size,
            Err(e) => {
                crate::warn_limited!(ctx.warnings, "cannot stat open log file",
                    path = %self.path.display(), "cannot stat open log file: {e}");
                return Ok(());
            }
        };
        if size < self.read_offset {
            // copytruncate: everything before was copied away; start over.
            SourceStats::bump(&ctx.stats.truncations, 1);
            info!(path = %self.path.display(), offset = self.read_offset, size,
                "log file was truncated; reading it from the start");
            if let Err(e) = self.seek(Start::At(0)).await {
                crate::warn_limited!(ctx.warnings, "cannot rewind truncated log file",
                    path = %self.path.display(), "cannot rewind truncated log file: {e}");
                return Ok(());
            }
        }
        match self.check_content(ctx).await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => {
                crate::warn_limited!(ctx.warnings, "cannot read log file",
                    path = %self.path.display(), "cannot read log file: {e}");
                return Ok(());
            }
        }
        let result = self.read_on(ctx).await;
        self.note_seen(ctx);
        result
    }

    async fn read_on(&mut self, ctx: &mut Ctx) -> Result<(), Closed> {
        // A rewrite noticed mid-read restarts from the start; bounded, so a
        // file rewritten without pause cannot keep us here.
        for _ in 0..4 {
            if !self.read_chunks(ctx).await? {
                return Ok(());
            }
            match self.check_content(ctx).await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => {
                    crate::warn_limited!(ctx.warnings, "cannot read log file",
                        path = %self.path.display(), "cannot read log file: {e}");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Reads to the end; true when the file was found rewritten in place
    /// (the chunk just read is not delivered and the handle is at 0).
    async fn read_chunks(&mut self, ctx: &mut Ctx) -> Result<bool, Closed> {
        loop {
            let n = match self.file.read(&mut ctx.buf).await {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::warn_limited!(ctx.warnings, "cannot read log file",
                        path = %self.path.display(), "cannot read log file: {e}");
                    return Ok(false);
                }
            };
            SourceStats::bump(&ctx.stats.bytes, n as u64);
            self.active_at = Instant::now();
            let base = self.read_offset;
            self.read_offset += n as u64;
            // Rewritten between the check and this read: these bytes are
            // another content's, from the middle.
            if let Head::Print(before) = self.head {
                if self.read_head().await.ok() != Some(Head::Print(before)) {
                    SourceStats::bump(&ctx.stats.truncations, 1);
                    info!(path = %self.path.display(),
                        "log file was overwritten in place while being read; reading it from the start");
                    if let Err(e) = self.seek(Start::At(0)).await {
                        crate::warn_limited!(ctx.warnings, "cannot rewind truncated log file",
                            path = %self.path.display(), "cannot rewind rewritten log file: {e}");
                        return Ok(false);
                    }
                    return Ok(true);
                }
            }
            // Every line completed by this read was read now.
            let read_at = SystemTime::now();
            let mut lines = Vec::new();
            self.asm.feed(&ctx.buf[..n], |bytes, kind, end| {
                lines.push((bytes, kind, base + end as u64))
            });
            for (bytes, kind, end) in lines {
                if end <= self.skip_until {
                    self.skipped += 1;
                    self.progress.skipped(end);
                } else if kind == LineKind::Discarded {
                    self.progress.skipped(end);
                } else {
                    self.send(ctx, bytes, kind, end, read_at).await?;
                }
            }
            if self.skipped > 0 && self.read_offset >= self.skip_until {
                info!(path = %self.path.display(), lines = self.skipped,
                    "skipped lines already read");
                self.skipped = 0;
            }
        }
    }

    async fn send(
        &mut self,
        ctx: &Ctx,
        bytes: Vec<u8>,
        kind: LineKind,
        end: u64,
        read_at: SystemTime,
    ) -> Result<(), Closed> {
        let truncated = kind == LineKind::Truncated;
        let (text, invalid) = decode(bytes, truncated);
        if invalid {
            SourceStats::bump(&ctx.stats.invalid_utf8_lines, 1);
        }
        if truncated {
            SourceStats::bump(&ctx.stats.truncated_lines, 1);
            if !self.warned_long {
                self.warned_long = true;
                warn!(path = %self.path.display(), max_line_bytes = self.max_line,
                    "line longer than max_line_bytes truncated; further ones in this file are only counted");
            }
        }
        let line = SourceLine {
            origin: self.origin.clone(),
            text,
            read_at,
            time: None,
            end: LineEnd::File {
                progress: self.progress.clone(),
                epoch: self.progress.sending(end),
                offset: end,
            },
        };
        ctx.tx.send(line).await.map_err(|_| Closed)?;
        SourceStats::bump(&ctx.stats.lines, 1);
        Ok(())
    }
}

fn origin_of(path: &Path) -> Arc<str> {
    Arc::from(path.to_string_lossy().as_ref())
}

/// The background task's state.
struct Follower {
    ctx: Ctx,
    shared: Arc<Shared>,
    dirs: HashMap<WatchDescriptor, WatchedDir>,
    watches: Watches,
    /// (directory watch, name) of a symlink's target -> the followed path.
    links: HashMap<(WatchDescriptor, OsString), PathBuf>,
    /// Followed path -> the file currently at that path.
    active: HashMap<PathBuf, Tailer>,
    /// Files renamed away or deleted, still drained through their handles.
    retired: Vec<Tailer>,
}

impl Follower {
    async fn run(mut self, mut events: EventStream<[u8; 4096]>) -> Result<(), Closed> {
        // What was written before and during `spawn` (resumed backlogs);
        // rotated-away predecessors first so lines stay in order.
        self.pump_retired().await?;
        let mut paths: Vec<PathBuf> = self.active.keys().cloned().collect();
        paths.sort();
        for path in &paths {
            self.follow_link(path);
        }
        for path in paths {
            if let Some(t) = self.active.get_mut(&path) {
                t.pump(&mut self.ctx).await?;
            }
        }

        while let Some(first) = events.next().await {
            let mut batch = vec![first];
            // Coalesce what is already queued: one stat and read per file per
            // batch rather than one per write(2) of the logging daemon.
            while batch.len() < MAX_BATCH {
                match events.next().now_or_never() {
                    Some(Some(ev)) => batch.push(ev),
                    _ => break,
                }
            }
            let mut paths = Vec::new();
            let mut seen = HashSet::new();
            let mut rescan = false;
            for ev in batch {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        error!("reading inotify events failed: {e}; log files are no longer followed, restart the agent");
                        return Ok(());
                    }
                };
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    warn!("inotify queue overflowed; re-checking every followed file (raise sysctl fs.inotify.max_queued_events if this repeats)");
                    rescan = true;
                    continue;
                }
                let Some(name) = ev.name else {
                    self.directory_event(&ev.wd, ev.mask);
                    continue;
                };
                if ev.mask.contains(EventMask::ISDIR) {
                    continue;
                }
                let Some(dir) = self.dirs.get(&ev.wd) else {
                    continue;
                };
                if dir.matches(&name) {
                    let path = dir.path.join(&name);
                    if seen.insert(path.clone()) {
                        paths.push(path);
                    }
                }
                // A symlink's target changed: reconcile the followed link.
                if let Some(path) = self.links.get(&(ev.wd.clone(), name.to_os_string())) {
                    if seen.insert(path.clone()) {
                        paths.push(path.clone());
                    }
                }
            }
            if rescan {
                self.rescan().await?;
            } else {
                for path in paths {
                    self.reconcile(path).await?;
                }
            }
            // Events on non-matching names (e.g. the old file, now `auth.log.1`,
            // still being written) land here.
            self.pump_retired().await?;
        }
        Ok(())
    }

    /// An event on a watched directory itself.
    fn directory_event(&mut self, wd: &WatchDescriptor, mask: EventMask) {
        let Some(dir) = self.dirs.get(wd) else {
            return;
        };
        if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::UNMOUNT) {
            warn!(dir = %dir.path.display(),
                "log directory was removed, moved or unmounted; files in it are no longer followed: restart the agent once it is back");
        }
        if mask.contains(EventMask::IGNORED) {
            self.dirs.remove(wd);
            self.links.retain(|(w, _), _| w != wd);
        }
    }

    /// If `path` is a symlink, watches its target's directory so that
    /// writes to the target are seen; forgets an earlier target.
    fn follow_link(&mut self, path: &Path) {
        self.links.retain(|_, p| p != path);
        let Some(target) = symlink_target(path) else {
            return;
        };
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return;
        };
        match self.watches.add(dir, dir_watch_mask()) {
            Ok(wd) => {
                self.dirs.entry(wd.clone()).or_insert_with(|| WatchedDir {
                    path: dir.to_path_buf(),
                    names: Vec::new(),
                });
                self.links
                    .insert((wd, name.to_os_string()), path.to_path_buf());
                info!(path = %path.display(), target = %target.display(),
                    "log file is a symlink; following its target");
            }
            Err(e) => {
                crate::warn_limited!(self.ctx.warnings, "cannot watch a symlink target's directory",
                    path = %path.display(), target = %target.display(),
                    "log file is a symlink whose target's directory cannot be watched ({e}): writes to it are only seen when the link's own directory changes; configure the target path instead");
            }
        }
    }

    /// Brings the followed file at `path` in line with what is there now.
    async fn reconcile(&mut self, path: PathBuf) -> Result<(), Closed> {
        let now = match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Some(FileId::of(&m)),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                crate::warn_limited!(self.ctx.warnings, "cannot stat log file",
                    path = %path.display(), "cannot stat log file: {e}");
                return Ok(());
            }
        };
        if let Some(t) = self.active.get_mut(&path) {
            if Some(t.id) == now {
                return t.pump(&mut self.ctx).await;
            }
        }
        let result = self.replace(path, now).await;
        self.publish();
        result
    }

    async fn replace(&mut self, path: PathBuf, now: Option<FileId>) -> Result<(), Closed> {
        if let Some(old) = self.active.get_mut(&path) {
            // Renamed away or deleted: finish its lines through the
            // still-open handle before anything from the new file (while
            // still published, so `positions` never lacks the path).
            old.pump(&mut self.ctx).await?;
        }
        if let Some(mut old) = self.active.remove(&path) {
            old.active_at = Instant::now();
            SourceStats::bump(&self.ctx.stats.rotations, 1);
            info!(path = %path.display(), "log file was rotated or removed; following its replacement");
            self.retired.push(old);
        }
        self.follow_link(&path);
        let Some(id) = now else {
            return Ok(());
        };
        let moved_from = self
            .active
            .iter()
            .find(|(_, t)| t.id == id)
            .map(|(p, _)| p.clone());
        let mut t = if let Some(old_path) = moved_from {
            // Already followed under another matching name: if it is still
            // there too, this is a hard link and we follow it once.
            if matches!(tokio::fs::metadata(&old_path).await, Ok(m) if FileId::of(&m) == id) {
                return Ok(());
            }
            // Renamed between two followed names (glob `auth.log*`): same
            // file, keep its offset so nothing is read twice.
            SourceStats::bump(&self.ctx.stats.rotations, 1);
            match self.active.remove(&old_path) {
                Some(t) => t,
                None => return Ok(()),
            }
        } else if let Some(i) = self.retired.iter().position(|t| t.id == id) {
            self.retired.remove(i)
        } else {
            // A file appearing while we run is a fresh log: read all of it.
            let mut t = match Tailer::open(&path, self.ctx.max_line).await {
                Ok(t) => t,
                Err(e) => {
                    crate::warn_limited!(self.ctx.warnings, "cannot open new log file",
                        path = %path.display(), "cannot open new log file: {e}; retrying on its next change");
                    return Ok(());
                }
            };
            if let Err(e) = t.seek(Start::At(0)).await {
                crate::warn_limited!(self.ctx.warnings, "cannot read new log file",
                    path = %path.display(), "cannot read new log file: {e}");
                return Ok(());
            }
            info!(path = %path.display(), "following new log file from its start");
            t
        };
        t.rename(path.clone());
        self.active.insert(path.clone(), t);
        // Published before its first line is delivered, so a consumer that
        // sees the line also sees the file in `files` and `positions`.
        self.publish();
        match self.active.get_mut(&path) {
            Some(t) => t.pump(&mut self.ctx).await,
            None => Ok(()),
        }
    }

    /// Drains renamed-away files and closes those that are done: unlinked
    /// (nothing can be appended any more), or quiet for [`RETIRED_GRACE`]
    /// while their replacement has data (the writer has reopened its log).
    async fn pump_retired(&mut self) -> Result<(), Closed> {
        let mut i = 0;
        while i < self.retired.len() {
            self.retired[i].pump(&mut self.ctx).await?;
            let t = &self.retired[i];
            let unlinked = match t.file.metadata().await {
                Ok(m) => m.nlink() == 0,
                Err(_) => true,
            };
            let replaced = self.active.get(&t.path).is_some_and(|n| n.read_offset > 0)
                && t.active_at.elapsed() >= RETIRED_GRACE;
            if unlinked || replaced {
                debug!(path = %t.path.display(), "closing rotated log file");
                self.retired.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// After an inotify overflow events were lost: check every file.
    async fn rescan(&mut self) -> Result<(), Closed> {
        let mut paths: Vec<PathBuf> = self.active.keys().cloned().collect();
        for dir in self.dirs.values() {
            match list_matching(&dir.path, &dir.names).await {
                Ok(found) => paths.extend(found),
                Err(e) => warn!(dir = %dir.path.display(), "cannot list log directory: {e}"),
            }
        }
        paths.sort();
        paths.dedup();
        for path in paths {
            self.reconcile(path).await?;
        }
        Ok(())
    }

    /// Shows the handle which files are followed and their offsets.
    fn publish(&self) {
        let map = self
            .active
            .iter()
            .map(|(p, t)| {
                let f = Followed {
                    id: t.id,
                    progress: t.progress.clone(),
                };
                (p.clone(), f)
            })
            .collect();
        *self
            .shared
            .followed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = map;
    }
}
