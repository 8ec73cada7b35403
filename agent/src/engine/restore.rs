//! Start-up: the store's bans into the book, and the kernel's ban tries
//! reconciled with it (entries updated in place, never removed and re-added;
//! unknown entries adopted, never removed).

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{expiry, Agent};
use crate::addr::Target;
use crate::ban::{BanClass, BanRecord, MapChange, UnixSecs};
use crate::enforce::KernelBans;
use crate::units::BanTime;

/// Time spent per step of a long operation (start-up), for the log.
#[derive(Debug, Default, Clone)]
pub struct Phases {
    last: Option<Instant>,
    pub steps: Vec<(&'static str, Duration)>,
}

impl Phases {
    pub fn start() -> Phases {
        Phases {
            last: Some(Instant::now()),
            steps: Vec::new(),
        }
    }

    /// The step `name` ended now.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        let since = self.last.map_or(Duration::ZERO, |t| now - t);
        self.steps.push((name, since));
        self.last = Some(now);
    }

    /// `expire 0.01 s, book 1.20 s, ...`
    pub fn render(&self) -> String {
        self.steps
            .iter()
            .map(|(n, d)| format!("{n} {:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What start-up found in the store.
#[derive(Debug, Default)]
pub struct RestoreReport {
    pub restored: usize,
    pub expired: usize,
    /// Kernel entries of bans that expired while the agent was down: removed.
    pub stale_map_entries: usize,
    /// Kernel entries the store did not know (an empty, new or replaced
    /// database): kept and stored under [`ADOPTED_JAIL`].
    pub adopted: usize,
    /// Where the time went, in order (for the log and the benchmark).
    pub phases: Phases,
}

/// The jail name of bans found in the kernel but not in the store at start.
pub const ADOPTED_JAIL: &str = "adopted";

impl Agent {
    /// Load bans from the store (dropping expired ones), write the allowlist,
    /// and make the kernel's ban tries hold exactly the active bans. Entries a
    /// previous agent left are updated in place, never removed and re-added,
    /// so an active ban never stops dropping.
    pub fn restore(&mut self, now: UnixSecs) -> Result<RestoreReport> {
        // What expired while the agent was down: its kernel entries go. Any
        // other entry the store does not know is adopted, never removed: an
        // empty or new database must not unban what the kernel drops.
        let mut expired_targets = std::collections::HashSet::new();
        self.bans.store.for_each_expired(now, |t| {
            expired_targets.insert(t);
        })?;
        let mut phases = Phases::start();
        let mut report = RestoreReport {
            expired: self.bans.store.delete_expired(now)?,
            ..Default::default()
        };
        phases.mark("expire");
        self.purge_history(now)?;
        self.escalator.restore_history(&self.bans.store, now)?;
        self.rebuild_allowlist()?;
        self.bans.enforcer.set_allowlist(&self.allowlist)?;
        self.refresh_jail_ignores();
        // Read (and built) on a thread of its own during the XDP load.
        let built = self.bans.store.read_book()?;
        report.restored = self.bans.book.install(built, now);
        phases.mark("book");
        // What the kernel held at load, before the lists add to the book:
        // "as stored" is the book as loaded now.
        let mut in_kernel = match self.bans.enforcer.entries_for_restore()? {
            KernelBans::Read(read) => read,
            KernelBans::AsStored { extra, since } => {
                let model = self.kernel_as_stored(&expired_targets, extra, since);
                let count = self.bans.enforcer.entry_count();
                if count.is_some_and(|n| n != model.len()) {
                    // The marker vouched for something else: read them.
                    tracing::warn!(
                        kernel = count.unwrap_or(0),
                        stored = model.len(),
                        "warm start: the pinned ban maps do not hold what the store says; reading them back"
                    );
                    self.bans.enforcer.entries()?
                } else {
                    model
                }
            }
        };
        phases.mark("kernel read");
        // Before the reconcile below, so blocklisted entries a previous
        // agent left in the kernel are kept, not removed and re-added.
        self.sync_blocklists(false)?;
        self.sync_geo(false)?;
        phases.mark("lists");
        // The kernel's entries and the book's, both in target order, joined
        // by one merge: what only the kernel holds (adopted, or removed when
        // expired), what the kernel lacks or holds with another class
        // (written below), and the tarpit class (steered first).
        in_kernel.sort_unstable_by_key(|(t, _)| *t);
        let mut adopted = Vec::new();
        let mut write = Vec::new();
        let mut tarpit = Vec::new();
        let mut kernel = in_kernel.iter().peekable();
        let mut kernel_only = Vec::new();
        for (target, class) in self.bans.book.effective_all() {
            while let Some(k) = kernel.next_if(|(t, _)| *t < target) {
                kernel_only.push(*k);
            }
            let have = kernel.next_if(|(t, _)| *t == target).map(|(_, c)| *c);
            if have != Some(Some(class)) {
                write.push((target, class));
            }
            if class == BanClass::Tarpit {
                tarpit.push(target);
            }
        }
        kernel_only.extend(kernel.copied());
        drop(in_kernel);
        for (target, class) in kernel_only {
            if expired_targets.contains(&target) {
                self.bans.enforcer.apply(&target, MapChange::Remove)?;
                report.stale_map_entries += 1;
            } else {
                let class_now = class.unwrap_or(BanClass::Drop);
                if class != Some(class_now) {
                    write.push((target, class_now));
                }
                if class_now == BanClass::Tarpit {
                    tarpit.push(target);
                }
                adopted.push(BanRecord {
                    target,
                    jail: ADOPTED_JAIL.to_string(),
                    class: class_now,
                    banned_at: now,
                    expires_at: expiry(now, self.default_bantime),
                    failures: 0,
                    matches: Vec::new(),
                });
            }
        }
        if !adopted.is_empty() {
            report.adopted = adopted.len();
            // Not in the history: an adopted entry says nothing of escalation.
            if let Err(e) = self.bans.store.put_bans(&adopted, None) {
                let waiting = adopted.iter().map(|r| (r.clone(), now)).collect();
                self.bans.backlog.failed(waiting, &format!("{e:#}"), now);
            }
            let bantime = match self.default_bantime {
                BanTime::Finite(d) => crate::units::format_duration(d),
                BanTime::Permanent => "permanent".into(),
            };
            tracing::warn!(
                adopted = adopted.len(),
                "the kernel holds bans the ban database does not know (empty, new or replaced {}?): kept as jail={ADOPTED_JAIL}, class as in the kernel, bantime {bantime} ([defaults] bantime) from now",
                self.bans.store.path().display()
            );
            for rec in adopted {
                self.bans.book.add(rec);
            }
        }
        // Steering first, so tarpit-class addresses are in the set before
        // XDP is told to pass them.
        self.bans.enforcer.sync_tarpit(&tarpit)?;
        self.bans.enforcer.set_all(&write)?;
        self.relabel_geo_entries()?;
        phases.mark("kernel write");
        report.phases = phases;
        Ok(report)
    }

    /// The kernel's entries when the restore marker held: what the store
    /// held at the last stop (the bans loaded now and those expired since)
    /// and `extra`, then what was written since load. Tarpit-class entries,
    /// expired ones and `extra` have no class here, so the merge writes
    /// them again (the kernel class of a tarpit ban depends on the steering
    /// found at start), never trusting what cannot be known.
    fn kernel_as_stored(
        &self,
        expired: &std::collections::HashSet<Target>,
        extra: Vec<Target>,
        mut since: std::collections::HashMap<Target, Option<BanClass>>,
    ) -> Vec<(Target, Option<BanClass>)> {
        let mut model: Vec<(Target, Option<BanClass>)> = self
            .bans
            .book
            .effective_all()
            .map(|(t, c)| (t, (c != BanClass::Tarpit).then_some(c)))
            .collect();
        model.extend(expired.iter().map(|t| (*t, None)));
        model.extend(extra.into_iter().map(|t| (t, None)));
        model.sort_unstable_by_key(|(t, _)| *t);
        // A target in two parts (a live and an expired ban): once, unknown.
        model.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                earlier.1 = None;
                true
            } else {
                false
            }
        });
        model.retain_mut(|(t, c)| match since.remove(t) {
            Some(Some(now)) => {
                *c = Some(now);
                true
            }
            Some(None) => false,
            None => true,
        });
        model.extend(
            since
                .into_iter()
                .filter_map(|(t, c)| c.map(|c| (t, Some(c)))),
        );
        model
    }

    /// At a clean stop: the maps' fingerprint and the kernel entries no
    /// stored ban accounts for (geo and blocklist entries), when the kernel
    /// holds exactly the book and the store every book ban but those (no
    /// backlog waiting for the disk). `None`: the next start reads the
    /// kernel back (see `store::marker`).
    pub fn restore_marker(&self) -> Option<(Vec<u64>, Vec<Target>)> {
        if !self.bans.backlog.is_empty() {
            return None;
        }
        let maps = self
            .bans
            .enforcer
            .stop_fingerprint(self.bans.book.len_targets())?;
        let mut extra: Vec<Target> = self.dynamic.geo.applied.bans.keys().copied().collect();
        extra.extend(self.blocklists.listed.iter().copied());
        extra.sort_unstable();
        extra.dedup();
        Some((maps, extra))
    }
}

#[cfg(test)]
#[path = "restore_tests.rs"]
mod tests;
