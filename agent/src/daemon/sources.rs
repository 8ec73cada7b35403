//! The running readers (log files, the journal): opened for their jails
//! from the saved positions, started, changed by reloads, stopped, and
//! their positions saved per jail. Which jails share a reader, and where
//! each starts, is decided in [`super::readers`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use super::readers::{self, Member, ReaderKey};
use super::Daemon;
use crate::engine::routes::{ReaderId, ReaderLine};
use crate::source::file::{FilePosition, FileSource, FileSourceOptions};
use crate::source::journal::{JournalSource, JournalSourceOptions};
use crate::source::{SourceLine, SourceStats, StartAfter};

/// A running source, whatever its kind.
pub(super) enum RunningSource {
    Files(FileSource),
    Journal(JournalSource),
}

impl RunningSource {
    pub(super) fn following(&self) -> Vec<String> {
        match self {
            RunningSource::Files(s) => {
                let mut f: Vec<String> =
                    s.files().iter().map(|p| p.display().to_string()).collect();
                f.sort();
                f
            }
            RunningSource::Journal(_) => vec!["journal".into()],
        }
    }

    pub(super) fn stats(&self) -> Arc<SourceStats> {
        match self {
            RunningSource::Files(s) => s.stats(),
            RunningSource::Journal(s) => s.stats(),
        }
    }

    pub(super) async fn shutdown(self) {
        match self {
            RunningSource::Files(s) => s.shutdown().await,
            RunningSource::Journal(s) => s.shutdown().await,
        }
    }
}

/// A running source and the jails reading its lines.
pub(super) struct Reader {
    pub(super) key: ReaderKey,
    pub(super) source: RunningSource,
    pub(super) members: Vec<Member>,
}

impl Reader {
    pub(super) fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.jail.clone()).collect()
    }

    pub(super) fn has_jail(&self, jail: &str) -> bool {
        self.members.iter().any(|m| m.jail == jail)
    }

    /// A line of this reader, for the engine: with the jails it is not
    /// for (those still before their own start).
    pub(super) fn route(&self, reader: ReaderId, line: SourceLine) -> ReaderLine {
        let except = if self.members.iter().any(|m| !m.starts.is_empty()) {
            readers::except(&self.members, &line)
        } else {
            Vec::new()
        };
        ReaderLine {
            reader,
            line,
            except,
        }
    }
}

fn position_prefix(jail: &str) -> String {
    format!("file:{jail}:")
}

fn journal_key(jail: &str) -> String {
    format!("journal:{jail}")
}

/// A reader opened but not yet delivering: its lines wait until
/// [`Daemon::install_reader`] (a reload switches only once every new reader
/// opened), or are dropped with it.
pub(super) struct PreparedReader {
    pub(super) id: ReaderId,
    pub(super) reader: Reader,
    pub(super) go: tokio::sync::oneshot::Sender<()>,
}

impl Daemon {
    /// The readers of the configured jails, at start: one per distinct
    /// key (see [`readers`]).
    pub(super) async fn start_readers(
        &mut self,
        jails: &[crate::config::JailSettings],
    ) -> Result<()> {
        let keyed: Vec<(String, ReaderKey)> = jails
            .iter()
            .map(|j| (j.name.clone(), ReaderKey::of(j)))
            .collect();
        for (key, names) in readers::group(&keyed) {
            let p = self.prepare_reader(key, names).await?;
            self.install_reader(p);
        }
        Ok(())
    }

    /// Start delivering a prepared reader's lines to its jails.
    pub(super) fn install_reader(&mut self, p: PreparedReader) {
        let _ = p.go.send(());
        self.core.set_route(p.id, p.reader.names());
        self.readers.insert(p.id, p.reader);
    }

    /// The positions `jail` saved, per file.
    fn saved_positions(&mut self, jail: &str) -> Result<HashMap<PathBuf, FilePosition>> {
        let prefix = position_prefix(jail);
        Ok(self
            .core
            .store()
            .positions_with_prefix(&prefix)?
            .into_iter()
            .map(|(k, dev, inode, offset)| {
                (
                    PathBuf::from(&k[prefix.len()..]),
                    FilePosition { dev, inode, offset },
                )
            })
            .collect())
    }

    /// Open a reader for `jails` (files watched and opened, or journalctl
    /// started) from their saved positions; its lines are held until it is
    /// installed.
    pub(super) async fn prepare_reader(
        &mut self,
        key: ReaderKey,
        jails: Vec<String>,
    ) -> Result<PreparedReader> {
        let (tx, mut rx) = mpsc::channel::<SourceLine>(1024);
        let fwd = self.line_tx.clone();
        self.next_reader += 1;
        let id = self.next_reader;
        let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            if go_rx.await.is_err() {
                return;
            }
            while let Some(l) = rx.recv().await {
                if fwd.send((id, l)).await.is_err() {
                    break;
                }
            }
        });
        // The jail the error names: the first; the others read it too.
        let first = jails.first().cloned().unwrap_or_default();
        let also = match jails.len() {
            0 | 1 => String::new(),
            _ => format!(" (read for jails {} too)", jails[1..].join(", ")),
        };
        let mut members: Vec<Member> = jails.into_iter().map(Member::new).collect();
        let source = match &key {
            ReaderKey::Journal { jail, matches } => {
                let cursor = self.core.store().cursor(&journal_key(jail))?;
                let s = JournalSource::spawn(
                    JournalSourceOptions {
                        matches: matches.clone(),
                        cursor,
                    },
                    tx,
                )
                .await
                .with_context(|| format!("jails.{first} (journal)"))?;
                tracing::info!(jail = %jail, "following the systemd journal");
                RunningSource::Journal(s)
            }
            ReaderKey::Files(patterns) => {
                let saved = members
                    .iter()
                    .map(|m| self.saved_positions(&m.jail))
                    .collect::<Result<Vec<_>>>()?;
                let resume =
                    readers::shared_resume(&saved, |p| readers::stat(p).map(|s| (s.0, s.1)));
                // Sizes before the reader opens them: a jail new to a file
                // has the lines up to here already, as it would have
                // unshared (it starts at the end).
                let sizes: HashMap<PathBuf, (u64, u64, u64)> = resume
                    .keys()
                    .filter_map(|p| Some((p.clone(), readers::stat(p)?)))
                    .collect();
                let s = FileSource::spawn(
                    FileSourceOptions {
                        patterns: patterns.clone(),
                        resume: resume.clone(),
                        max_line_bytes: 64 * 1024,
                    },
                    tx,
                )
                .await
                .with_context(|| format!("jails.{first}.logpath{also}"))?;
                for f in s.followed_files() {
                    let id = (f.position.dev, f.position.inode);
                    // Only files the reader resumed in mid-way (not one it
                    // reads from its start, or from the end).
                    if resume.get(&f.path).is_none_or(|r| (r.dev, r.inode) != id) {
                        continue;
                    }
                    let size = sizes.get(&f.path).filter(|s| (s.0, s.1) == id).map(|s| s.2);
                    for (m, rows) in members.iter_mut().zip(&saved) {
                        if let Some(until) = readers::start_in_file(rows.get(&f.path), id, size) {
                            m.starts.extend(StartAfter::new(&f.progress, until));
                        }
                    }
                }
                let jails: Vec<&str> = members.iter().map(|m| m.jail.as_str()).collect();
                tracing::info!(jails = ?jails, files = ?patterns, "following log files");
                RunningSource::Files(s)
            }
        };
        Ok(PreparedReader {
            id,
            reader: Reader {
                key,
                source,
                members,
            },
            go,
        })
    }

    /// `jail` starts reading a running reader (a reload): with the lines
    /// after its saved position in a file it had read, after the end of a
    /// file new to it.
    pub(super) fn join_reader(&mut self, id: ReaderId, jail: &str) {
        let rows = self.saved_positions(jail).unwrap_or_else(|e| {
            tracing::warn!("jails.{jail}: saved positions unreadable, starting at the end: {e:#}");
            HashMap::new()
        });
        let Some(reader) = self.readers.get_mut(&id) else {
            return;
        };
        let mut member = Member::new(jail.to_string());
        if let RunningSource::Files(src) = &reader.source {
            for f in src.followed_files() {
                let id = (f.position.dev, f.position.inode);
                let size = readers::stat(&f.path)
                    .filter(|s| (s.0, s.1) == id)
                    .map(|s| s.2);
                if let Some(until) = readers::start_in_file(rows.get(&f.path), id, size) {
                    member.starts.extend(StartAfter::new(&f.progress, until));
                }
            }
        }
        reader.members.push(member);
    }

    /// `jail` stops reading reader `id` (the reader goes on for the others).
    pub(super) fn leave_reader(&mut self, id: ReaderId, jail: &str) {
        if let Some(r) = self.readers.get_mut(&id) {
            r.members.retain(|m| m.jail != jail);
        }
    }

    pub(super) async fn stop_reader(&mut self, id: ReaderId) {
        self.save_positions();
        self.core.remove_route(id);
        if let Some(r) = self.readers.remove(&id) {
            r.source.shutdown().await;
        }
    }

    /// Every jail's positions: its reader's, or its own start in a file
    /// where it is ahead of the reader.
    pub(super) fn save_positions(&mut self) {
        for reader in self.readers.values_mut() {
            let r: Result<()> = match &reader.source {
                RunningSource::Files(src) => {
                    let files = src.followed_files();
                    let mut r = Ok(());
                    for m in &mut reader.members {
                        for f in &files {
                            let key = format!("{}{}", position_prefix(&m.jail), f.path.display());
                            if let Err(e) = self.core.save_position(&key, &m.position(f)) {
                                r = Err(e);
                            }
                        }
                        m.starts.retain(|s| s.pending().is_some());
                    }
                    r
                }
                RunningSource::Journal(src) => match src.cursor() {
                    Some(c) => reader.members.iter().try_for_each(|m| {
                        self.core
                            .store()
                            .save_cursor(&journal_key(&m.jail), &c)
                            .map_err(Into::into)
                    }),
                    None => Ok(()),
                },
            };
            if let Err(e) = r {
                tracing::warn!("saving source positions: {e:#}");
            }
        }
    }
}
