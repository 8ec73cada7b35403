//! Bans in batches: the bans of one loop turn are decided line by line,
//! then stored in one transaction, then written to the kernel together
//! (steering first, one `ipset restore`), then logged. A ban is in the
//! store before it is in the kernel; a failed store write sends the whole
//! batch to the backlog (they still go to the kernel), so none is lost.

use std::collections::HashMap;

use anyhow::Result;

use super::Agent;
use crate::addr::Target;
use crate::ban::{now_secs, BanRecord, MapChange, UnixSecs};

/// A ban decided in the open batch, not yet stored or applied.
#[derive(Debug)]
pub(super) struct StagedBan {
    pub(super) rec: BanRecord,
    /// Log time of the failure that caused it (its history time).
    pub(super) event_at: UnixSecs,
    /// [`offence_key`](crate::store::offence_key) of its lines.
    pub(super) offence: String,
    /// Written by the batch's store write; `false`: stored already (a
    /// fleet ban, in the batch's transaction).
    pub(super) write: bool,
}

/// The open batch's bans, with an index by target: a jail's failures for
/// an address it banned in this batch do not count, and escalation counts
/// the batch's bans as history.
#[derive(Debug, Default)]
pub(super) struct StagedBans {
    pub(super) bans: Vec<StagedBan>,
    by_target: HashMap<Target, Vec<usize>>,
}

impl StagedBans {
    pub(super) fn push(&mut self, ban: StagedBan) {
        self.by_target
            .entry(ban.rec.target)
            .or_default()
            .push(self.bans.len());
        self.bans.push(ban);
    }

    fn of(&self, target: &Target) -> impl Iterator<Item = &StagedBan> {
        self.by_target
            .get(target)
            .into_iter()
            .flatten()
            .map(|&i| &self.bans[i])
    }

    /// Has `jail` banned `target` in this batch?
    pub(super) fn contains(&self, target: &Target, jail: &str) -> bool {
        self.of(target).any(|b| b.rec.jail == jail)
    }

    /// History times of `target`'s bans in this batch (of `only_jail`, or
    /// all), leaving out the same offence of `jail` at `event_at` (as the
    /// store's own lookup does).
    pub(super) fn history_of(
        &self,
        target: &Target,
        only_jail: Option<&str>,
        jail: &str,
        event_at: UnixSecs,
        offence: &str,
    ) -> Vec<UnixSecs> {
        self.of(target)
            .filter(|b| b.write)
            .filter(|b| only_jail.is_none_or(|j| b.rec.jail == j))
            .filter(|b| {
                !(b.rec.jail == jail
                    && b.event_at == event_at
                    && (b.offence.is_empty() || b.offence == offence))
            })
            .map(|b| b.event_at)
            .collect()
    }

    pub(super) fn take(&mut self) -> Vec<StagedBan> {
        self.by_target.clear();
        std::mem::take(&mut self.bans)
    }
}

/// What happens to a batch whose store write fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnStoreError {
    /// The bans go to the kernel anyway and wait in the backlog.
    Backlog,
    /// None of them is applied (their sender tries again).
    Drop,
}

impl Agent {
    /// Open a batch: until [`finish_batch`](Self::finish_batch), bans are
    /// decided and staged, store writes share one transaction.
    pub fn begin_batch(&mut self) {
        self.bans.store.arm_batch();
        self.bans.batching = true;
    }

    /// Bans waiting in the open batch.
    pub fn staged_bans(&self) -> usize {
        self.bans.staged.bans.len()
    }

    /// Close the batch: its bans into the store (one transaction), then
    /// into the kernel, then logged. If the store cannot take them (full
    /// disk) they still go to the kernel and wait in the backlog.
    pub fn finish_batch(&mut self) {
        if let Err(e) = self.close_batch(OnStoreError::Backlog) {
            tracing::error!("{e:#}");
        }
    }

    /// Store, then kernel. With [`OnStoreError::Drop`] a failed store write
    /// is returned and nothing is applied.
    pub(super) fn close_batch(&mut self, on_error: OnStoreError) -> Result<()> {
        self.bans.batching = false;
        let staged = self.bans.staged.take();
        let to_write = staged
            .iter()
            .filter(|b| b.write)
            .map(|b| (&b.rec, b.event_at));
        let mut error = self
            .bans
            .store
            .put_bans_at(to_write)
            .err()
            .map(|e| format!("{e:#}"));
        match &error {
            // Rolled back with the batch: none of its bans is stored.
            Some(_) => self.bans.store.abort_batch(),
            None => {
                if let Err(e) = self.bans.store.commit_batch() {
                    error = Some(format!("{e:#}"));
                }
            }
        }
        if let Some(e) = error {
            if on_error == OnStoreError::Drop {
                anyhow::bail!("ban database: {e}");
            }
            let failed: Vec<(BanRecord, UnixSecs)> = staged
                .iter()
                .filter(|b| b.write)
                .map(|b| (b.rec.clone(), b.event_at))
                .collect();
            if !failed.is_empty() {
                self.bans.backlog.failed(failed, &e, now_secs());
            }
        }
        self.enforce_bans(staged.into_iter().map(|b| b.rec).collect());
        Ok(())
    }

    /// Stored bans into the book and the kernel (one batch: steering
    /// first), then each one's log line and event. A ban the kernel
    /// refused is in the book and the store; the error is logged.
    pub(super) fn enforce_bans(&mut self, recs: Vec<BanRecord>) {
        if recs.is_empty() {
            return;
        }
        let changes: Vec<(Target, MapChange)> = recs
            .iter()
            .map(|rec| {
                // The book keeps no matched lines (see `restore`).
                let change = self.bans.book.add(BanRecord {
                    jail: rec.jail.clone(),
                    matches: Vec::new(),
                    ..*rec
                });
                (rec.target, change)
            })
            .collect();
        let failed = self.bans.enforcer.apply_all(&changes);
        for rec in recs {
            match failed.iter().find(|(t, _)| *t == rec.target) {
                Some((_, e)) => tracing::error!("jail {}: {e:#}", rec.jail),
                None => self.banned(rec),
            }
        }
    }
}
