//! Blocklist files as bans: each entry a permanent ban of jail `blocklist`,
//! re-read on change; entries gone from the files are unbanned.

use anyhow::Result;

use super::Agent;
use crate::addr::Target;
use crate::ban::{now_secs, BanClass, BanRecord};
use crate::blocklist::{Blocklists, BLOCKLIST_JAIL};
use crate::guard::BanOrigin;

/// The blocklist files and the entries banned from them.
pub struct BlocklistSync {
    pub(super) lists: Blocklists,
    /// `[agent] blocklist_append`: permanent bans are appended to the file.
    pub(super) append: bool,
    pub(super) listed: std::collections::BTreeSet<Target>,
}

impl BlocklistSync {
    pub(super) fn new(files: Vec<std::path::PathBuf>, append: bool) -> BlocklistSync {
        BlocklistSync {
            lists: Blocklists::new(files),
            append,
            listed: Default::default(),
        }
    }

    /// A reload's files and `blocklist_append`; the entries are re-read by
    /// the next sync.
    pub(super) fn configure(&mut self, files: &[std::path::PathBuf], append: bool) {
        self.append = append;
        if self.lists.files() != files {
            self.lists = Blocklists::new(files.to_vec());
        }
    }
}

impl Agent {
    /// Re-read the blocklist files: new entries become permanent bans, entries
    /// gone from the files are unbanned. `apply`: write the kernel now (at
    /// start the restore reconcile does it).
    pub fn sync_blocklists(&mut self, apply: bool) -> Result<()> {
        if self.blocklists.lists.is_empty() {
            return Ok(());
        }
        let (wanted, bad) = self.blocklists.lists.load();
        Blocklists::warn_bad_lines(&bad);
        let now = now_secs();
        let gone: Vec<Target> = self
            .blocklists
            .listed
            .difference(&wanted)
            .copied()
            .collect();
        for t in gone {
            let (removed, change) = self.bans.book.remove(&t, Some(BLOCKLIST_JAIL));
            if apply {
                self.bans.enforcer.apply(&t, change)?;
            }
            for r in removed {
                self.bans.unbanned(r, "removed-from-file");
            }
        }
        let mut kept = std::collections::BTreeSet::new();
        for t in wanted {
            let known = self.blocklists.listed.contains(&t);
            // A refusal is logged once per entry, when it first appears.
            let verdict = if known {
                self.may_ban(&t, &[], false)
            } else {
                self.guard_ban(&t, BanOrigin::Blocklist, &[], false)
            };
            if let Err(r) = verdict {
                if known {
                    tracing::warn!("blocklist entry {t}: {r}; unbanned");
                    let (removed, change) = self.bans.book.remove(&t, Some(BLOCKLIST_JAIL));
                    if apply {
                        self.bans.enforcer.apply(&t, change)?;
                    }
                    for r in removed {
                        self.bans.unbanned(r, "refused");
                    }
                } else {
                    tracing::warn!("blocklist entry {t} skipped");
                }
                continue;
            }
            // The file, re-read, is the truth for its own entries: one
            // unbanned by hand comes back.
            let in_book = self
                .bans
                .book
                .records(&t)
                .iter()
                .any(|r| r.jail == BLOCKLIST_JAIL);
            if !in_book {
                let change = self.bans.book.add(BanRecord {
                    target: t,
                    jail: BLOCKLIST_JAIL.to_string(),
                    class: BanClass::Drop,
                    banned_at: now,
                    expires_at: None,
                    failures: 0,
                    matches: Vec::new(),
                });
                if apply {
                    self.bans.enforcer.apply(&t, change)?;
                }
            }
            kept.insert(t);
        }
        if kept.len() != self.blocklists.listed.len() || apply {
            tracing::info!(entries = kept.len(), "blocklist files loaded");
        }
        self.blocklists.listed = kept;
        Ok(())
    }

    pub fn blocklists_changed(&mut self) -> bool {
        self.blocklists.lists.changed()
    }
}
