//! Log sources: files followed with inotify, and the systemd journal.
//!
//! Both deliver [`SourceLine`]s on a bounded `tokio::sync::mpsc` channel and
//! await when it is full, so a slow consumer slows the reader down instead of
//! losing lines.

pub(crate) mod file;
pub(crate) mod journal;
mod line;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// One line read from a source.
#[derive(Debug, Clone)]
pub struct SourceLine {
    /// File path, or `"journal"`.
    pub origin: Arc<str>,
    /// Without the trailing newline; lossily decoded if not UTF-8.
    pub text: String,
    pub read_at: SystemTime,
    /// Set by sources that know the entry time (journal); files leave `None`.
    pub time: Option<SystemTime>,
    /// Where the line ends in its source; see [`SourceLine::processed`].
    pub end: LineEnd,
}

impl SourceLine {
    /// The consumer is done with this line (and every line before it from
    /// the same source): the source's saved position may now pass it. A
    /// position never passes a line still queued, so a stop loses none.
    pub fn processed(&self) {
        match &self.end {
            LineEnd::None => {}
            LineEnd::File {
                progress,
                epoch,
                offset,
            } => progress.processed(*epoch, *offset),
            LineEnd::Journal { processed, cursor } => {
                *processed.lock().unwrap_or_else(PoisonError::into_inner) = Some(cursor.clone());
            }
        }
    }
}

/// Where a delivered line ends: a file offset, or a journal cursor.
#[derive(Debug, Clone, Default)]
pub enum LineEnd {
    /// Nothing to persist (tests, lines made up by hand).
    #[default]
    None,
    File {
        progress: Arc<FileProgress>,
        /// Lines read before the file was re-positioned (truncated) are stale.
        epoch: u64,
        offset: u64,
    },
    Journal {
        processed: Arc<Mutex<Option<String>>>,
        cursor: String,
    },
}

/// How far a file's lines were processed by the consumer, which is the
/// offset to save. Shared by the reading task and the consumer.
#[derive(Debug, Default)]
pub struct FileProgress {
    state: Mutex<ProgressState>,
}

#[derive(Debug, Default)]
struct ProgressState {
    epoch: u64,
    /// Just past the last line the consumer processed.
    processed: u64,
    /// Just past the last line handed to the channel.
    sent: u64,
    /// A skipped stretch (the tail of a line we started inside) right after
    /// the line ending at `.0`: once that line is processed, jump to `.1`.
    skip: Option<(u64, u64)>,
}

impl FileProgress {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn offset(&self) -> u64 {
        self.lock().processed
    }

    /// Just past the last line handed to the consumer (read, maybe not yet
    /// processed).
    pub(crate) fn sent(&self) -> u64 {
        self.lock().sent
    }

    /// The reader moved to `offset` (start, seek, truncation): lines in
    /// flight from before no longer count.
    pub(crate) fn reset(&self, offset: u64) {
        let mut s = self.lock();
        s.epoch += 1;
        s.processed = offset;
        s.sent = offset;
        s.skip = None;
    }

    /// A line ending at `offset` is about to be sent; returns its epoch.
    pub(crate) fn sending(&self, offset: u64) -> u64 {
        let mut s = self.lock();
        s.sent = offset;
        s.epoch
    }

    /// Bytes up to `offset` were skipped without sending a line.
    pub(crate) fn skipped(&self, offset: u64) {
        let mut s = self.lock();
        if s.processed == s.sent {
            s.processed = offset;
        } else {
            // Consecutive skips after one line in flight make one stretch.
            let after = match s.skip {
                Some((after, to)) if to == s.sent => after,
                _ => s.sent,
            };
            s.skip = Some((after, offset));
        }
        s.sent = offset;
    }

    fn processed(&self, epoch: u64, offset: u64) {
        let mut s = self.lock();
        if s.epoch != epoch {
            return;
        }
        s.processed = offset;
        if let Some((after, to)) = s.skip {
            if after == offset {
                s.processed = to;
                s.skip = None;
            }
        }
    }
}

/// A jail's own start in a file read for several jails (the daemon's
/// shared readers): the file's lines as read now (same progress, same
/// epoch) that end at or before `until` were had by the jail already.
#[derive(Debug, Clone)]
pub(crate) struct StartAfter {
    progress: Arc<FileProgress>,
    epoch: u64,
    until: u64,
}

impl StartAfter {
    /// `None` when the reader is there already (nothing to skip).
    pub(crate) fn new(progress: &Arc<FileProgress>, until: u64) -> Option<StartAfter> {
        let s = progress.lock();
        (until > s.processed).then(|| StartAfter {
            progress: progress.clone(),
            epoch: s.epoch,
            until,
        })
    }

    /// Whether `line` is one of the lines the jail had already.
    pub(crate) fn covers(&self, line: &SourceLine) -> bool {
        match &line.end {
            LineEnd::File {
                progress,
                epoch,
                offset,
            } => {
                Arc::ptr_eq(progress, &self.progress)
                    && *epoch == self.epoch
                    && *offset <= self.until
            }
            _ => false,
        }
    }

    /// `until`, while the reader of `progress`'s file has not processed
    /// past it (nor re-positioned the file: truncated, read again).
    pub(crate) fn pending_for(&self, progress: &Arc<FileProgress>) -> Option<u64> {
        if !Arc::ptr_eq(progress, &self.progress) {
            return None;
        }
        self.pending()
    }

    /// `until` while it still matters (see [`pending_for`](Self::pending_for)).
    pub(crate) fn pending(&self) -> Option<u64> {
        let s = self.progress.lock();
        (s.epoch == self.epoch && s.processed < self.until).then_some(self.until)
    }
}

/// Counters a source exposes (atomics, shared with the reading task).
#[derive(Debug, Default)]
pub(crate) struct SourceStats {
    /// Lines delivered on the channel.
    pub lines: AtomicU64,
    /// Bytes read from the source (files: file bytes including newlines and
    /// skipped parts of over-long lines; journal: JSON bytes from journalctl).
    pub bytes: AtomicU64,
    /// Lines cut to the configured maximum length (journal: also oversized
    /// entries that had to be dropped).
    pub truncated_lines: AtomicU64,
    /// Lines that were not valid UTF-8 and were decoded lossily.
    pub invalid_utf8_lines: AtomicU64,
    /// Followed paths whose file was replaced or removed (rename rotation).
    pub rotations: AtomicU64,
    /// Files that shrank under us (copytruncate) and were re-read from 0.
    pub truncations: AtomicU64,
}

impl SourceStats {
    pub(crate) fn bump(counter: &AtomicU64, n: u64) {
        // Counters are independent statistics; no ordering with other memory needed.
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Errors from starting a source. Each message names what failed and how to fix it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    #[error(
        "log pattern `{pattern}` has a glob in its directory part; only the file name may be a \
         glob (e.g. /var/log/nginx/*.log): list each directory as its own pattern"
    )]
    GlobInDirectory { pattern: String },

    #[error(
        "log pattern `{pattern}` does not name a file: give a file path or a file-name glob \
         such as /var/log/auth.log or /var/log/nginx/*.log"
    )]
    NoFileName { pattern: String },

    #[error("log pattern `{pattern}` is not a valid glob ({source}): fix the pattern")]
    InvalidGlob {
        pattern: String,
        #[source]
        source: globset::Error,
    },

    #[error(
        "directory {dir} (from log pattern `{pattern}`) does not exist: create it or fix the \
         pattern; missing files are picked up when they appear, but their directory must exist \
         at start"
    )]
    DirectoryMissing { dir: PathBuf, pattern: String },

    #[error(
        "{dir} (from log pattern `{pattern}`) is not a directory: fix the pattern so its \
         directory part names a directory"
    )]
    NotADirectory { dir: PathBuf, pattern: String },

    #[error(
        "cannot read directory {dir}: {source}: give the agent read and search permission on it \
         (run it as root or in the log group, e.g. adm)"
    )]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot create an inotify instance: {source}: raise the limit with \
         `sysctl fs.inotify.max_user_instances=<more>`"
    )]
    Inotify {
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot watch directory {dir} with inotify: {source}: check the agent can read it, or \
         raise `sysctl fs.inotify.max_user_watches` if the limit is reached"
    )]
    Watch {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot open log file {path}: {source}: give the agent read permission on it (run it as \
         root or in the log's group, e.g. adm)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "journalctl was not found in PATH: install systemd's journalctl, or configure file logs \
         (log paths) instead of the journal"
    )]
    JournalctlMissing,

    #[error("cannot run {program}: {source}: check that it is executable by the agent")]
    JournalSpawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "journal match `{matched}` is not valid: use FIELD=value (e.g. \
         _SYSTEMD_UNIT=sshd.service), `+` between match groups, or an absolute executable path"
    )]
    JournalMatch { matched: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(progress: &Arc<FileProgress>, epoch: u64, offset: u64) -> SourceLine {
        SourceLine {
            origin: Arc::from("x"),
            text: String::new(),
            read_at: SystemTime::now(),
            time: None,
            end: LineEnd::File {
                progress: progress.clone(),
                epoch,
                offset,
            },
        }
    }

    #[test]
    fn a_start_after_covers_the_lines_up_to_it_until_the_reader_passes() {
        let p = Arc::new(FileProgress::default());
        p.reset(100);
        assert!(StartAfter::new(&p, 100).is_none(), "the reader is there");
        let s = StartAfter::new(&p, 300).unwrap();
        let before = line(&p, p.sending(200), 200);
        let at = line(&p, p.sending(300), 300);
        let after = line(&p, p.sending(400), 400);
        assert!(s.covers(&before) && s.covers(&at) && !s.covers(&after));
        let other = Arc::new(FileProgress::default());
        assert!(!s.covers(&line(&other, 0, 200)), "another file's line");
        assert!(s.pending_for(&other).is_none());
        before.processed();
        assert_eq!(s.pending_for(&p), Some(300), "the jail's row stays at 300");
        at.processed();
        assert_eq!(s.pending(), None, "the reader passed it");
        // Truncated and read again: the old start no longer applies.
        let s = StartAfter::new(&p, 900).unwrap();
        p.reset(0);
        assert!(!s.covers(&line(&p, p.sending(50), 50)));
        assert_eq!(s.pending(), None);
    }

    #[test]
    fn file_progress_follows_processing_skips_and_resets() {
        let p = Arc::new(FileProgress::default());
        p.reset(10);
        let a = line(&p, p.sending(20), 20);
        // The tail of a line we started inside, right after `a`.
        p.skipped(30);
        assert_eq!(p.offset(), 10, "`a` is still in flight");
        a.processed();
        assert_eq!(p.offset(), 30, "past `a` and the skipped tail");
        // Nothing in flight: a skip moves the offset at once.
        p.skipped(40);
        assert_eq!(p.offset(), 40);
        // A line from before a truncation no longer counts.
        let old = line(&p, p.sending(50), 50);
        p.reset(0);
        old.processed();
        assert_eq!(p.offset(), 0);
        let new = line(&p, p.sending(5), 5);
        new.processed();
        assert_eq!(p.offset(), 5);
    }
}
