//! The background task: inotify events on the watched directories turned
//! into opens, rotations, link changes and reads (the rules are in the
//! module docs of [`super`]).
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use futures_util::{FutureExt, StreamExt};
use inotify::{EventMask, EventStream, WatchDescriptor, Watches};
use tracing::{debug, error, info, warn};

use super::pattern::{list_matching, symlink_target, WatchedDir};
use super::tailer::{Closed, Ctx, FileId, Start, Tailer};
use super::{dir_watch_mask, Followed, Shared, MAX_BATCH, RETIRED_GRACE};
use crate::source::SourceStats;

/// The background task's state.
pub(super) struct Follower {
    pub(super) ctx: Ctx,
    pub(super) shared: Arc<Shared>,
    pub(super) dirs: HashMap<WatchDescriptor, WatchedDir>,
    pub(super) watches: Watches,
    /// (directory watch, name) of a symlink's target -> the followed path.
    pub(super) links: HashMap<(WatchDescriptor, OsString), PathBuf>,
    /// Followed path -> the file currently at that path.
    pub(super) active: HashMap<PathBuf, Tailer>,
    /// Files renamed away or deleted, still drained through their handles.
    pub(super) retired: Vec<Tailer>,
}

impl Follower {
    pub(super) async fn run(mut self, mut events: EventStream<[u8; 4096]>) -> Result<(), Closed> {
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
    pub(super) fn directory_event(&mut self, wd: &WatchDescriptor, mask: EventMask) {
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
    pub(super) fn follow_link(&mut self, path: &Path) {
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
    pub(super) async fn reconcile(&mut self, path: PathBuf) -> Result<(), Closed> {
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

    pub(super) async fn replace(
        &mut self,
        path: PathBuf,
        now: Option<FileId>,
    ) -> Result<(), Closed> {
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
    pub(super) async fn pump_retired(&mut self) -> Result<(), Closed> {
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
    pub(super) async fn rescan(&mut self) -> Result<(), Closed> {
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
    pub(super) fn publish(&self) {
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
