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

mod follower;
mod pattern;
mod tailer;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use inotify::{Inotify, WatchDescriptor, WatchMask};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::{FileProgress, SourceError, SourceLine, SourceStats};
use follower::Follower;
use pattern::{list_matching, parse_pattern, NameMatch, Pattern, WatchedDir};
pub(crate) use pattern::{pattern_parts, PatternParts};
use tailer::{open_predecessor, Ctx, FileId, Start, Tailer};

/// Default for [`FileSourceOptions::max_line_bytes`].
pub(crate) const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;

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
pub(crate) struct FileSourceOptions {
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

/// A file being followed: where its lines were processed to, and the
/// progress its lines carry ([`super::StartAfter`]).
#[derive(Debug, Clone)]
pub(crate) struct FollowedFile {
    pub path: PathBuf,
    pub position: FilePosition,
    pub progress: Arc<FileProgress>,
}

/// Handle on the task following the files.
#[derive(Debug)]
pub(crate) struct FileSource {
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
    pub(crate) async fn spawn(
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
    /// [processed](SourceLine::processed)).
    #[cfg(test)]
    pub(crate) fn positions(&self) -> HashMap<PathBuf, FilePosition> {
        self.followed_files()
            .into_iter()
            .map(|f| (f.path, f.position))
            .collect()
    }

    /// The files being followed, with their positions and progress.
    pub(crate) fn followed_files(&self) -> Vec<FollowedFile> {
        self.followed()
            .into_iter()
            .map(|(path, f)| FollowedFile {
                path,
                position: FilePosition {
                    dev: f.id.dev,
                    inode: f.id.ino,
                    offset: f.progress.offset(),
                },
                progress: f.progress,
            })
            .collect()
    }

    /// Files being followed now.
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.followed().into_keys().collect();
        files.sort();
        files
    }

    pub(crate) fn stats(&self) -> Arc<SourceStats> {
        self.shared.stats.clone()
    }

    /// Stops the task; lines not yet processed are not in
    /// [`positions`](Self::positions), so a resume re-reads them.
    pub(crate) async fn shutdown(self) {
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
