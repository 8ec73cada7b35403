//! One open file being read ([`Tailer`]): positioning, reading whole
//! lines, first-line fingerprints that recognise content read before, and
//! the predecessor of a file rotated while the agent was down.
use std::collections::HashMap;
use std::io::{self, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{FilePosition, FINGERPRINT_MAX, MAX_SEEN};
use crate::source::line::{decode, LineAssembler, LineKind};
use crate::source::{FileProgress, LineEnd, SourceLine, SourceStats};

/// A file's first line, hashed with its length: what identifies content
/// that reappears under another name or is overwritten in place.
pub(super) type Fingerprint = (u64, usize);

/// What the start of a file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Head {
    /// No complete first line yet.
    Incomplete,
    /// An empty first line: nothing to recognise the content by.
    Unusable,
    Print(Fingerprint),
}

pub(super) fn fingerprint(line: &[u8]) -> Fingerprint {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the same line hashes the same in every run.
    let mut h = std::hash::DefaultHasher::new();
    line.hash(&mut h);
    (h.finish(), line.len())
}

/// When a followed file was rotated while we were down, its old inode may
/// still be in the directory under another name: open it at the remembered
/// offset so its last lines are read (before the new file).
pub(super) async fn open_predecessor(
    path: &Path,
    pos: &FilePosition,
    max_line: usize,
) -> Option<Tailer> {
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
pub(super) struct FileId {
    pub(super) dev: u64,
    pub(super) ino: u64,
}

impl FileId {
    pub(super) fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Start {
    At(u64),
    End,
}

/// What the reading task needs besides the files.
pub(super) struct Ctx {
    pub(super) tx: mpsc::Sender<SourceLine>,
    pub(super) stats: Arc<SourceStats>,
    pub(super) buf: Box<[u8]>,
    pub(super) max_line: usize,
    /// First-line fingerprint -> bytes of that content read (any file).
    pub(super) seen: HashMap<Fingerprint, u64>,
    /// Warnings that could repeat for every event.
    pub(super) warnings: crate::ratelimit::WarnLimiter,
}

/// The receiver was dropped: nobody wants lines any more.
pub(super) struct Closed;

/// One open file being read.
pub(super) struct Tailer {
    pub(super) path: PathBuf,
    pub(super) origin: Arc<str>,
    pub(super) file: File,
    pub(super) id: FileId,
    /// Bytes consumed from the file, including a partial line held in `asm`.
    pub(super) read_offset: u64,
    /// How far the consumer got; shared with [`FileSource::positions`].
    pub(super) progress: Arc<FileProgress>,
    pub(super) asm: LineAssembler,
    pub(super) max_line: usize,
    pub(super) warned_long: bool,
    /// When data was last read, or the file was last retired.
    pub(super) active_at: Instant,
    /// The first line's fingerprint, once known.
    pub(super) head: Head,
    /// Read from 0 anew: compare the first line with content read before.
    pub(super) check_head: bool,
    /// Lines ending at or before this offset were read already (under
    /// another name, or before an in-place overwrite): skip them.
    pub(super) skip_until: u64,
    pub(super) skipped: u64,
}

impl Tailer {
    /// Opens `path` at offset 0; the caller then [`seek`](Self::seek)s.
    pub(super) async fn open(path: &Path, max_line: usize) -> io::Result<Tailer> {
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

    pub(super) async fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata().await?.len())
    }

    /// Positions the handle; any held partial line is dropped.
    pub(super) async fn seek(&mut self, start: Start) -> io::Result<()> {
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
    pub(super) async fn read_head(&mut self) -> io::Result<Head> {
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
    pub(super) async fn check_content(&mut self, ctx: &mut Ctx) -> io::Result<bool> {
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
    pub(super) fn note_seen(&self, ctx: &mut Ctx) {
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
    pub(super) async fn end_start(&mut self) -> io::Result<(u64, bool)> {
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

    pub(super) fn rename(&mut self, path: PathBuf) {
        self.origin = origin_of(&path);
        self.path = path;
    }

    /// Reads to the end of the file through the open handle, sending every
    /// complete line. Awaits when the channel is full (backpressure).
    pub(super) async fn pump(&mut self, ctx: &mut Ctx) -> Result<(), Closed> {
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

    pub(super) async fn read_on(&mut self, ctx: &mut Ctx) -> Result<(), Closed> {
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
    pub(super) async fn read_chunks(&mut self, ctx: &mut Ctx) -> Result<bool, Closed> {
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

    pub(super) async fn send(
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

pub(super) fn origin_of(path: &Path) -> Arc<str> {
    Arc::from(path.to_string_lossy().as_ref())
}
