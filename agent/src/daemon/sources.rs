//! The running sources (log files, the journal): opened for a jail from
//! the saved positions, started, stopped, and their positions saved.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use super::Daemon;
use crate::config::{JailSettings, SourceSpec};
use crate::source::file::{FilePosition, FileSource, FileSourceOptions};
use crate::source::journal::{journal_available, JournalSource, JournalSourceOptions};
use crate::source::{SourceLine, SourceStats};

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

fn position_prefix(jail: &str) -> String {
    format!("file:{jail}:")
}

fn journal_key(jail: &str) -> String {
    format!("journal:{jail}")
}

/// A source opened for a jail but not yet delivering: its lines wait until
/// [`Daemon::install_source`] (a reload switches only once every new source
/// opened), or are dropped with it.
pub(super) struct PreparedSource {
    pub(super) jail: String,
    pub(super) generation: u64,
    pub(super) source: RunningSource,
    pub(super) go: tokio::sync::oneshot::Sender<()>,
}

/// Files if any of them is there now; otherwise the journal, if this
/// machine has one; otherwise wait for the files.
fn choose_source(spec: &SourceSpec) -> SourceSpec {
    match spec {
        SourceSpec::FilesOrJournal {
            files,
            journalmatch,
        } => {
            let any_file = files.iter().any(|p| {
                let path = Path::new(p);
                if p.contains(['*', '?', '[']) {
                    path.parent().is_some_and(Path::exists)
                } else {
                    path.exists()
                }
            });
            if !any_file && journal_available() {
                SourceSpec::Journal(journalmatch.clone())
            } else {
                SourceSpec::Files(files.clone())
            }
        }
        other => other.clone(),
    }
}

impl Daemon {
    pub(super) async fn start_source(&mut self, jail: &JailSettings) -> Result<()> {
        let prepared = self.prepare_source(jail).await?;
        self.install_source(prepared);
        Ok(())
    }

    /// Start delivering a prepared source's lines.
    pub(super) fn install_source(&mut self, p: PreparedSource) {
        let _ = p.go.send(());
        self.generations.insert(p.jail.clone(), p.generation);
        self.sources.insert(p.jail, p.source);
    }

    /// Open a jail's source (files watched and opened, or journalctl
    /// started) from the saved positions; its lines are held until it is
    /// installed.
    pub(super) async fn prepare_source(&mut self, jail: &JailSettings) -> Result<PreparedSource> {
        let (tx, mut rx) = mpsc::channel::<SourceLine>(1024);
        let fwd = self.line_tx.clone();
        let name: Arc<str> = Arc::from(jail.name.as_str());
        self.next_generation += 1;
        let generation = self.next_generation;
        let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            if go_rx.await.is_err() {
                return;
            }
            while let Some(l) = rx.recv().await {
                if fwd.send((name.clone(), generation, l)).await.is_err() {
                    break;
                }
            }
        });
        let source = match choose_source(&jail.source) {
            SourceSpec::Journal(matches) => {
                let cursor = self.core.store().cursor(&journal_key(&jail.name))?;
                let s = JournalSource::spawn(JournalSourceOptions { matches, cursor }, tx)
                    .await
                    .with_context(|| format!("jails.{} (journal)", jail.name))?;
                tracing::info!(jail = %jail.name, "following the systemd journal");
                RunningSource::Journal(s)
            }
            SourceSpec::Files(patterns)
            | SourceSpec::FilesOrJournal {
                files: patterns, ..
            } => {
                let prefix = position_prefix(&jail.name);
                let resume = self
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
                    .collect();
                let s = FileSource::spawn(
                    FileSourceOptions {
                        patterns: patterns.clone(),
                        resume,
                        max_line_bytes: 64 * 1024,
                    },
                    tx,
                )
                .await
                .with_context(|| format!("jails.{}.logpath", jail.name))?;
                tracing::info!(jail = %jail.name, files = ?patterns, "following log files");
                RunningSource::Files(s)
            }
        };
        Ok(PreparedSource {
            jail: jail.name.clone(),
            generation,
            source,
            go,
        })
    }

    pub(super) async fn stop_source(&mut self, jail: &str) {
        self.save_positions();
        self.generations.remove(jail);
        if let Some(s) = self.sources.remove(jail) {
            s.shutdown().await;
        }
    }

    pub(super) fn save_positions(&mut self) {
        for (jail, s) in &self.sources {
            let r: Result<()> = match s {
                RunningSource::Files(src) => src.positions().iter().try_for_each(|(path, pos)| {
                    self.core
                        .save_position(&format!("{}{}", position_prefix(jail), path.display()), pos)
                }),
                RunningSource::Journal(src) => match src.cursor() {
                    Some(c) => self
                        .core
                        .store()
                        .save_cursor(&journal_key(jail), &c)
                        .map_err(Into::into),
                    None => Ok(()),
                },
            };
            if let Err(e) = r {
                tracing::warn!("saving source positions: {e:#}");
            }
        }
    }
}
