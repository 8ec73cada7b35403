//! The ban engine: the ban book, the store and the enforcer, written in that
//! order (a ban reported is a ban kept), with the batch that shares one
//! commit, the backlog of bans the store could not take, and the events
//! (bans and unbans) the daemon turns into actions and metrics.

use std::time::Duration;

use anyhow::Result;

use super::{dynamic_geo_jail, Agent};
use crate::addr::Target;
use crate::ban::{now_secs, BanBook, BanEvent, BanEventKind, BanRecord, MapChange, UnixSecs};
use crate::blocklist::BLOCKLIST_JAIL;
use crate::enforce::Enforcer;
use crate::engine::backlog::StoreBacklog;
use crate::engine::batch::{OnStoreError, StagedBan, StagedBans};
use crate::store::BanStore;

/// The bans: book (in memory), store (on disk), enforcer (the kernel).
pub struct BanEngine {
    pub(super) book: BanBook,
    pub(super) store: BanStore,
    pub(super) enforcer: Box<dyn Enforcer>,
    pub(super) dbpurgeage: Duration,
    /// Bans and unbans since the last `take_events`.
    pub(super) events: Vec<BanEvent>,
    /// Bans decided in the open batch: stored when it closes, then
    /// applied (see [`Agent::finish_batch`]).
    pub(super) staged: StagedBans,
    pub(super) batching: bool,
    /// Bans enforced but not yet stored (full disk).
    pub(super) backlog: StoreBacklog,
}

impl BanEngine {
    pub(super) fn new(
        book: BanBook,
        store: BanStore,
        enforcer: Box<dyn Enforcer>,
        dbpurgeage: Duration,
    ) -> BanEngine {
        BanEngine {
            book,
            store,
            enforcer,
            dbpurgeage,
            events: Vec::new(),
            staged: StagedBans::default(),
            batching: false,
            backlog: StoreBacklog::default(),
        }
    }

    /// Bans and unbans since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<BanEvent> {
        std::mem::take(&mut self.events)
    }

    pub(super) fn unbanned(&mut self, record: BanRecord, reason: &'static str) {
        tracing::info!(
            "unban {} jail={} class={} reason={reason}",
            record.target,
            record.jail,
            record.class
        );
        self.events.push(BanEvent {
            kind: BanEventKind::Unban,
            record,
            reason,
        });
    }

    /// Write the bans waiting in the backlog, when it is time to try again.
    /// What is written is the book's version of each (a ban lifted or
    /// replaced since is not written back).
    pub fn retry_store(&mut self) {
        if !self.backlog.due() {
            return;
        }
        let recs: Vec<(BanRecord, UnixSecs)> = self
            .backlog
            .pending()
            .filter_map(|(r, at)| {
                self.book
                    .records(&r.target)
                    .iter()
                    .find(|b| b.jail == r.jail && b.banned_at == r.banned_at)
                    .map(|b| (b.clone(), *at))
            })
            .collect();
        match self.store.put_bans_at(recs.iter().map(|(r, at)| (r, *at))) {
            Ok(()) => self.backlog.written(),
            Err(e) => self
                .backlog
                .failed(Vec::new(), &format!("{e:#}"), now_secs()),
        }
    }

    pub fn store_health(&self) -> crate::engine::backlog::StoreHealth {
        self.backlog.health()
    }

    /// Forget ban history older than dbpurgeage.
    pub fn purge_history(&mut self, now: UnixSecs) -> Result<usize> {
        let purged = self
            .store
            .purge_history(now - self.dbpurgeage.as_secs() as i64)?;
        if purged > 0 {
            tracing::debug!(purged, "ban history purged (dbpurgeage)");
        }
        Ok(purged)
    }

    /// End the bans that are due, all in one store transaction and one
    /// kernel batch; returns how many ended.
    pub fn expire(&mut self, now: UnixSecs) -> Result<usize> {
        let ended = self.book.expire(now);
        if ended.is_empty() {
            return Ok(0);
        }
        // A row the store cannot delete now (full disk) has expired
        // anyway: the next start deletes it. The kernel entry goes now.
        if let Err(e) = self
            .store
            .delete_bans(ended.iter().map(|(r, _)| (&r.target, r.jail.as_str())))
        {
            tracing::warn!("expired bans lifted, but not deleted from the store (done at the next start): {e:#}");
        }
        let changes: Vec<(Target, MapChange)> = ended
            .iter()
            .map(|(r, change)| (r.target, *change))
            .collect();
        let failed = self.enforcer.apply_all(&changes);
        let n = ended.len();
        for (rec, _) in ended {
            self.backlog.forget(&rec.target, Some(&rec.jail));
            self.unbanned(rec, "expired");
        }
        if let Some((target, e)) = failed.into_iter().next() {
            return Err(e.context(format!("expiring the ban of {target}")));
        }
        Ok(n)
    }
}

impl Agent {
    /// Run `f` with ban writes sharing one commit (as [`on_lines`](Self::on_lines)
    /// does); the bans reach the kernel after the commit. If the store
    /// cannot take them, none of them is applied.
    pub fn batched(&mut self, f: impl FnOnce(&mut Agent)) -> Result<()> {
        self.begin_batch();
        f(self);
        self.close_batch(OnStoreError::Drop)
    }

    /// Store, then the kernel, then the log line: a ban reported is a ban kept.
    /// Callers have asked the guard ([`guard_ban`](Self::guard_ban)). In a
    /// batch the ban is staged: stored and applied when the batch closes.
    pub(super) fn apply_ban(&mut self, rec: BanRecord, event_at: UnixSecs) -> Result<BanRecord> {
        if self.bans.batching {
            let offence = crate::store::offence_key(&rec.matches);
            self.bans.staged.push(StagedBan {
                rec: rec.clone(),
                event_at,
                offence,
                write: true,
            });
            return Ok(rec);
        }
        let stored = self.bans.store.put_ban(&rec, event_at);
        self.enforce_ban(&rec)?;
        if let Err(e) = stored {
            self.bans
                .backlog
                .failed(vec![(rec.clone(), event_at)], &format!("{e:#}"), now_secs());
        }
        Ok(rec)
    }

    /// The stored ban into the book and the kernel, then its log line.
    pub(super) fn enforce_ban(&mut self, rec: &BanRecord) -> Result<()> {
        // The book keeps no matched lines (see `restore`).
        let change = self.bans.book.add(BanRecord {
            jail: rec.jail.clone(),
            matches: Vec::new(),
            ..*rec
        });
        self.bans.enforcer.apply(&rec.target, change)?;
        self.banned(rec.clone());
        Ok(())
    }

    /// A ban is in the kernel: the blocklist file (permanent bans, when
    /// asked), its log line and its event.
    pub(super) fn banned(&mut self, rec: BanRecord) {
        if self.blocklists.append && rec.expires_at.is_none() && rec.jail != BLOCKLIST_JAIL {
            match self
                .blocklists
                .lists
                .append(&rec.target, &format!("jail={} permanent", rec.jail))
            {
                Ok(Some(path)) => {
                    tracing::info!(target = %rec.target, file = %path.display(), "permanent ban appended to the blocklist")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
        let bantime = match rec.expires_at {
            Some(e) => crate::units::format_duration(Duration::from_secs(
                (e - rec.banned_at).max(0) as u64,
            )),
            None => "permanent".into(),
        };
        let expires = match rec.expires_at {
            Some(e) => chrono::DateTime::from_timestamp(e, 0)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
            None => "never".into(),
        };
        // The recidive filter reads this line: keep its leading shape.
        tracing::info!(
            "ban {} jail={} class={} bantime={} failures={} expires={}",
            rec.target,
            rec.jail,
            rec.class,
            bantime,
            rec.failures,
            expires
        );
        self.bans.events.push(BanEvent {
            kind: BanEventKind::Ban,
            record: rec,
            reason: "",
        });
    }

    pub fn unban(&mut self, target: &Target, jail: Option<&str>) -> Result<Vec<BanRecord>> {
        self.refuse_geo_unban(target, jail)?;
        self.unban_because(target, jail, "request")
    }

    pub(super) fn unban_because(
        &mut self,
        target: &Target,
        jail: Option<&str>,
        reason: &'static str,
    ) -> Result<Vec<BanRecord>> {
        self.bans.store.delete_ban(target, jail)?;
        let (removed, change) = match jail {
            Some(j) => self.bans.book.remove(target, Some(j)),
            // Every jail's ban but a geo rule's.
            None => {
                let jails: Vec<String> = self
                    .bans
                    .book
                    .records(target)
                    .iter()
                    .filter(|r| r.jail != dynamic_geo_jail())
                    .map(|r| r.jail.clone())
                    .collect();
                let mut removed = Vec::new();
                let mut change = MapChange::Unchanged;
                for j in jails {
                    let (r, c) = self.bans.book.remove(target, Some(&j));
                    removed.extend(r);
                    if c != MapChange::Unchanged {
                        change = c;
                    }
                }
                (removed, change)
            }
        };
        self.bans.backlog.forget(target, jail);
        self.bans.enforcer.apply(target, change)?;
        if removed.iter().any(|r| r.jail == BLOCKLIST_JAIL) {
            tracing::warn!("{target} is listed in a blocklist file: it is banned again when the file is next re-read (on change, reload or restart); remove it from the file to unban it for good");
        }
        if target.is_host() {
            self.jails.forget(&target.addr());
        }
        for r in &removed {
            self.bans.unbanned(r.clone(), reason);
        }
        Ok(removed)
    }

    /// Lift every ban (of one jail, if given): `xban unban --all`.
    pub fn unban_all(&mut self, jail: Option<&str>) -> Result<Vec<BanRecord>> {
        let targets: std::collections::BTreeSet<Target> = self
            .bans
            .book
            .iter()
            .filter(|r| jail.is_none_or(|j| r.jail == j))
            .filter(|r| r.jail != dynamic_geo_jail())
            .map(|r| r.target)
            .collect();
        let mut removed = Vec::new();
        for t in targets {
            removed.extend(self.unban(&t, jail)?);
        }
        Ok(removed)
    }
}
