//! The agent: sources feed jails, jails ask for bans, bans go to the store and
//! then the kernel. [`AgentCore`] holds every piece of state and is driven by
//! one loop ([`run`]), so a control request never races a ban.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::addr::Target;
use crate::ban::{now_secs, BanBook, BanClass, BanRecord, MapChange, UnixSecs};
use crate::blocklist::{Blocklists, BLOCKLIST_JAIL};
use crate::config::{BanTime, ResolvedConfig};
use crate::control::{Reply, Request};
use crate::enforce::Enforcer;
use crate::escalation::{self, EscalationConfig, SubnetTracker, SUBNET_JAIL};
use crate::jail::{BanRequest, Jail, JailVerdict};
use crate::source::file::FilePosition;
use crate::source::SourceLine;
use crate::store::BanStore;

/// The jail name of bans made by hand with `xban ban`.
pub const MANUAL_JAIL: &str = "manual";

/// One ban as `xban banned` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct BanView {
    pub address: String,
    pub jail: String,
    pub class: BanClass,
    pub banned_at: UnixSecs,
    /// `None`: permanent.
    pub expires_at: Option<UnixSecs>,
    pub failures: u32,
    /// Bans from the fleet (jail `fleet`): the node that made them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl From<&BanRecord> for BanView {
    fn from(r: &BanRecord) -> Self {
        let origin = crate::fleet::apply::origin_of(&r.jail);
        BanView {
            address: r.target.to_string(),
            origin: origin.map(str::to_string),
            jail: match origin {
                Some(_) => crate::fleet::FLEET_JAIL.to_string(),
                None => r.jail.clone(),
            },
            class: r.class,
            banned_at: r.banned_at,
            expires_at: r.expires_at,
            failures: r.failures,
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct JailStatus {
    pub name: String,
    pub failing_now: usize,
    pub bans_now: usize,
    pub counters: JailCountersView,
    /// What the jail reads: the files followed now, or `journal`.
    #[serde(default)]
    pub following: Vec<String>,
    /// With `status JAIL`: addresses failing now and their counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<(String, usize)>,
}

pub type JailCountersView = serde_json::Value;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatusView {
    pub interfaces: Vec<String>,
    pub xdp_mode: String,
    pub bans_active: usize,
    pub bans_drop: usize,
    pub bans_tarpit: usize,
    pub map_entries: usize,
    pub xdp: Option<serde_json::Value>,
    /// Tarpit steering: mode, set members, chain counters.
    pub tarpit: Option<serde_json::Value>,
    pub jails: Vec<JailStatus>,
    /// `[fleet]`: connection, stream and consumer positions, counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<serde_json::Value>,
}

/// A ban or unban that happened, for actions and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct BanEvent {
    pub kind: BanEventKind,
    pub record: BanRecord,
    /// Unbans: why (`expired`, `request`, `removed-from-file`).
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanEventKind {
    Ban,
    Unban,
}

/// Every piece of the agent's state.
pub struct AgentCore {
    allowlist: Vec<Target>,
    jails: Vec<Jail>,
    book: BanBook,
    store: BanStore,
    enforcer: Box<dyn Enforcer>,
    default_bantime: BanTime,
    default_class: BanClass,
    interfaces: Vec<String>,
    xdp_mode: String,
    escalation: EscalationConfig,
    subnets: SubnetTracker,
    dbpurgeage: Duration,
    blocklists: Blocklists,
    blocklist_append: bool,
    blocklisted: std::collections::BTreeSet<Target>,
    /// Bans and unbans since the last `take_events`.
    events: Vec<BanEvent>,
    /// Bans stored in the open store batch, applied once it commits
    /// (see [`AgentCore::on_lines`]).
    staged: Vec<BanRecord>,
    batching: bool,
}

/// What start-up found in the store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub restored: usize,
    pub expired: usize,
    pub stale_map_entries: usize,
}

impl AgentCore {
    pub fn new(
        cfg: &ResolvedConfig,
        store: BanStore,
        enforcer: Box<dyn Enforcer>,
        self_addrs: &[Target],
    ) -> Result<AgentCore> {
        let mut jails = Vec::new();
        for j in &cfg.jails {
            jails.push(
                Jail::new(j.clone(), self_addrs).with_context(|| format!("jails.{}", j.name))?,
            );
        }
        Ok(AgentCore {
            allowlist: cfg.allowlist.clone(),
            jails,
            book: BanBook::default(),
            store,
            enforcer,
            default_bantime: cfg.default_bantime,
            default_class: cfg.default_class,
            interfaces: Vec::new(),
            xdp_mode: cfg.agent.xdp_mode.to_string(),
            escalation: cfg.escalation.clone(),
            subnets: SubnetTracker::default(),
            dbpurgeage: cfg.dbpurgeage,
            blocklists: Blocklists::new(cfg.agent.blocklist_files.clone()),
            blocklist_append: cfg.agent.blocklist_append,
            blocklisted: Default::default(),
            events: Vec::new(),
            staged: Vec::new(),
            batching: false,
        })
    }

    pub fn jails(&self) -> &[Jail] {
        &self.jails
    }

    /// What `status` reports as the XDP attachment.
    pub fn set_interfaces(&mut self, interfaces: Vec<String>, dry_run: bool) {
        self.interfaces = interfaces;
        if dry_run {
            self.xdp_mode = "dry-run (nothing attached)".into();
        }
    }

    /// Bans and unbans since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<BanEvent> {
        std::mem::take(&mut self.events)
    }

    fn unbanned(&mut self, record: BanRecord, reason: &'static str) {
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

    /// Apply a new configuration: allowlist, jails (keeping their counters
    /// and the failures they are counting), escalation, blocklists. Bans are
    /// untouched. Returns the jails whose source must (re)start.
    pub fn reload(&mut self, cfg: &ResolvedConfig, self_addrs: &[Target]) -> Result<Vec<String>> {
        let mut jails = Vec::new();
        let mut restart = Vec::new();
        for settings in &cfg.jails {
            let mut jail = Jail::new(settings.clone(), self_addrs)
                .with_context(|| format!("jails.{}", settings.name))?;
            match self.jails.iter_mut().find(|j| j.name() == settings.name) {
                Some(old) => {
                    jail.counters = std::mem::take(&mut old.counters);
                    if old.settings.findtime == settings.findtime
                        && old.settings.maxretry == settings.maxretry
                    {
                        std::mem::swap(&mut jail.window, &mut old.window);
                    }
                    if old.settings.source != settings.source {
                        restart.push(settings.name.clone());
                    }
                }
                None => restart.push(settings.name.clone()),
            }
            jails.push(jail);
        }
        self.enforcer.set_allowlist(&cfg.allowlist)?;
        self.allowlist = cfg.allowlist.clone();
        self.jails = jails;
        self.default_bantime = cfg.default_bantime;
        self.default_class = cfg.default_class;
        self.escalation = cfg.escalation.clone();
        self.dbpurgeage = cfg.dbpurgeage;
        self.blocklist_append = cfg.agent.blocklist_append;
        if self.blocklists.files() != cfg.agent.blocklist_files.as_slice() {
            self.blocklists = Blocklists::new(cfg.agent.blocklist_files.clone());
        }
        self.sync_blocklists(true)?;
        Ok(restart)
    }

    /// Load bans from the store (dropping expired ones), write the allowlist,
    /// and make the kernel's ban tries hold exactly the active bans. Entries a
    /// previous agent left are updated in place, never removed and re-added,
    /// so an active ban never stops dropping.
    pub fn restore(&mut self, now: UnixSecs) -> Result<RestoreReport> {
        let mut report = RestoreReport {
            expired: self.store.delete_expired(now)?,
            ..Default::default()
        };
        self.purge_history(now)?;
        let sn = &self.escalation.subnet;
        if self.escalation.enabled && sn.enabled {
            for (target, _jail, at) in self
                .store
                .history_since(now - sn.within.0.as_secs() as i64)?
            {
                if target.is_host() {
                    self.subnets.record(sn, target.addr(), at);
                }
            }
        }
        self.enforcer.set_allowlist(&self.allowlist)?;
        // Streamed without the matched lines: they stay in the database, the
        // agent never shows them, and a million bans' worth is gigabytes.
        let book = &mut self.book;
        report.restored = self.store.for_each_ban(|rec| {
            book.add(rec);
        })?;
        // Before the reconcile below, so blocklisted entries a previous
        // agent left in the kernel are kept, not removed and re-added.
        self.sync_blocklists(false)?;
        let in_kernel: HashMap<Target, Option<BanClass>> =
            self.enforcer.entries()?.into_iter().collect();
        for target in in_kernel.keys() {
            if self.book.effective(target).is_none() {
                self.enforcer.apply(target, MapChange::Remove)?;
                report.stale_map_entries += 1;
            }
        }
        let effective = self.effective_bans();
        // Steering first, so tarpit-class addresses are in the set before
        // XDP is told to pass them.
        let tarpit: Vec<Target> = effective
            .iter()
            .filter(|(_, c)| *c == BanClass::Tarpit)
            .map(|(t, _)| *t)
            .collect();
        self.enforcer.sync_tarpit(&tarpit)?;
        for (target, class) in effective {
            if in_kernel.get(&target) != Some(&Some(class)) {
                self.enforcer.apply(&target, MapChange::Set(class))?;
            }
        }
        Ok(report)
    }

    /// Each banned target with the class its map entry must have.
    fn effective_bans(&self) -> Vec<(Target, BanClass)> {
        self.book
            .effective_all()
            .map(|(t, r)| (*t, r.class))
            .collect()
    }

    fn allowlisted_by(&self, target: &Target) -> Option<&Target> {
        self.allowlist
            .iter()
            .find(|a| a.covers(target) || target.covers(a))
    }

    /// Feed one line to a jail; ban when it asks. Lines of a jail that a
    /// reload removed are dropped.
    pub fn on_line(&mut self, jail: &str, line: &SourceLine) -> Result<Option<BanRecord>> {
        let Some(jail) = self.jails.iter().position(|j| j.name() == jail) else {
            return Ok(None);
        };
        let verdict = self.jails[jail].process(&line.text, line.read_at, line.time);
        match verdict {
            JailVerdict::Ban(req) => self.ban_from_jail(req).map(Some),
            JailVerdict::Failure(addr) => {
                tracing::debug!(jail = %self.jails[jail].name(), %addr, "failure");
                Ok(None)
            }
            JailVerdict::Ignored(addr) => {
                tracing::debug!(jail = %self.jails[jail].name(), %addr, "failure by an ignored address");
                Ok(None)
            }
            JailVerdict::Nothing => Ok(None),
        }
    }

    /// Feed a batch of lines. The bans they cause are stored in one
    /// transaction, then written to the kernel and logged: a burst of
    /// offenders costs one commit, and a ban is still in the database before
    /// it is in the kernel. Returns when each applied ban's line was read.
    pub fn on_lines(&mut self, lines: &[(std::sync::Arc<str>, SourceLine)]) -> Vec<SystemTime> {
        self.store.arm_batch();
        self.batching = true;
        let mut read_at = Vec::new();
        for (jail, line) in lines {
            match self.on_line(jail, line) {
                Ok(Some(_)) => read_at.push(line.read_at),
                Ok(None) => {}
                Err(e) => tracing::error!("jail {jail}: {e:#}"),
            }
        }
        self.batching = false;
        let staged = std::mem::take(&mut self.staged);
        if let Err(e) = self.store.commit_batch() {
            for rec in &staged {
                tracing::error!(
                    "ban {} jail={} not stored, so not applied: {e:#}",
                    rec.target,
                    rec.jail
                );
            }
            return Vec::new();
        }
        for rec in &staged {
            if let Err(e) = self.enforce_ban(rec) {
                tracing::error!("jail {}: {e:#}", rec.jail);
            }
        }
        read_at
    }

    /// A jail's ban, escalated by the address's history. The history is in
    /// log time, so replaying an old log escalates as watching it live did.
    fn ban_from_jail(&mut self, req: BanRequest) -> Result<BanRecord> {
        let now = now_secs();
        let event_at = req
            .at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(now);
        let target = Target::host(req.addr);
        let per_jail = (!self.escalation.overalljails).then_some(req.jail.as_str());
        let store = &self.store;
        let mut lookup_error = None;
        let decision = escalation::decide(&self.escalation, req.bantime, req.class, |window| {
            let since = window.map(|w| event_at - w.as_secs() as i64).unwrap_or(0);
            store
                .ban_count_since(&target, per_jail, since)
                .unwrap_or_else(|e| {
                    lookup_error = Some(e);
                    0
                })
        });
        if let Some(e) = lookup_error {
            tracing::warn!("escalation history unreadable, banning without it: {e}");
        }
        if let Some(step) = decision.step {
            tracing::info!(%target, step, bantime = %decision.bantime, class = %decision.class, "escalated: repeat offender");
        }
        let rec = BanRecord {
            target,
            jail: req.jail,
            class: decision.class,
            banned_at: now,
            expires_at: expiry(now, decision.bantime),
            failures: req.failures,
            matches: req.matches,
        };
        let rec = self.apply_ban(rec, event_at)?;
        self.widen_to_subnet(req.addr, event_at, now);
        Ok(rec)
    }

    /// Enough distinct hosts of one prefix banned: ban the prefix.
    fn widen_to_subnet(&mut self, addr: IpAddr, event_at: UnixSecs, now: UnixSecs) {
        let sn = self.escalation.subnet.clone();
        if !(self.escalation.enabled && sn.enabled) {
            return;
        }
        let Some(prefix) = self.subnets.record(&sn, addr, event_at) else {
            return;
        };
        let rec = BanRecord {
            target: prefix,
            jail: SUBNET_JAIL.to_string(),
            class: sn.class,
            banned_at: now,
            expires_at: expiry(now, sn.bantime),
            failures: sn.hosts,
            matches: Vec::new(),
        };
        match self.apply_ban(rec, event_at) {
            Ok(_) => tracing::info!(%prefix, hosts = sn.hosts, "escalated to the whole prefix"),
            Err(e) => tracing::warn!(%prefix, "prefix not banned: {e:#}"),
        }
    }

    /// Re-read the blocklist files: new entries become permanent bans, entries
    /// gone from the files are unbanned. `apply`: write the kernel now (at
    /// start the restore reconcile does it).
    pub fn sync_blocklists(&mut self, apply: bool) -> Result<()> {
        if self.blocklists.is_empty() {
            return Ok(());
        }
        let (wanted, bad) = self.blocklists.load();
        for b in &bad {
            tracing::warn!(
                "blocklist {}:{}: {} (line skipped)",
                b.path.display(),
                b.line,
                b.message
            );
        }
        let now = now_secs();
        let gone: Vec<Target> = self.blocklisted.difference(&wanted).copied().collect();
        for t in gone {
            let (removed, change) = self.book.remove(&t, Some(BLOCKLIST_JAIL));
            if apply {
                self.enforcer.apply(&t, change)?;
            }
            for r in removed {
                self.unbanned(r, "removed-from-file");
            }
        }
        let mut kept = std::collections::BTreeSet::new();
        for t in wanted {
            if let Some(a) = self.allowlisted_by(&t) {
                tracing::warn!("blocklist entry {t} overlaps the allowlist entry {a}: skipped");
                continue;
            }
            if !self.blocklisted.contains(&t) {
                let change = self.book.add(BanRecord {
                    target: t,
                    jail: BLOCKLIST_JAIL.to_string(),
                    class: BanClass::Drop,
                    banned_at: now,
                    expires_at: None,
                    failures: 0,
                    matches: Vec::new(),
                });
                if apply {
                    self.enforcer.apply(&t, change)?;
                }
            }
            kept.insert(t);
        }
        if kept.len() != self.blocklisted.len() || apply {
            tracing::info!(entries = kept.len(), "blocklist files loaded");
        }
        self.blocklisted = kept;
        Ok(())
    }

    pub fn blocklists_changed(&self) -> bool {
        self.blocklists.changed()
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

    /// Store, then the kernel, then the log line: a ban reported is a ban kept.
    fn apply_ban(&mut self, rec: BanRecord, event_at: UnixSecs) -> Result<BanRecord> {
        if let Some(a) = self.allowlisted_by(&rec.target) {
            bail!(
                "{} overlaps the allowlist entry {a} ([defaults] ignoreip): remove it from ignoreip first",
                rec.target
            );
        }
        self.store.put_ban(&rec, event_at)?;
        if self.batching {
            self.staged.push(rec.clone());
        } else {
            self.enforce_ban(&rec)?;
        }
        Ok(rec)
    }

    /// The stored ban into the book and the kernel, then its log line.
    fn enforce_ban(&mut self, rec: &BanRecord) -> Result<()> {
        // The book keeps no matched lines (see `restore`).
        let change = self.book.add(BanRecord {
            jail: rec.jail.clone(),
            matches: Vec::new(),
            ..*rec
        });
        let rec = rec.clone();
        self.enforcer.apply(&rec.target, change)?;
        if self.blocklist_append && rec.expires_at.is_none() && rec.jail != BLOCKLIST_JAIL {
            match self
                .blocklists
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
            Some(e) => crate::config::format_duration(Duration::from_secs(
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
        self.events.push(BanEvent {
            kind: BanEventKind::Ban,
            record: rec.clone(),
            reason: "",
        });
        Ok(())
    }

    pub fn unban(&mut self, target: &Target, jail: Option<&str>) -> Result<Vec<BanRecord>> {
        self.unban_because(target, jail, "request")
    }

    fn unban_because(
        &mut self,
        target: &Target,
        jail: Option<&str>,
        reason: &'static str,
    ) -> Result<Vec<BanRecord>> {
        self.store.delete_ban(target, jail)?;
        let (removed, change) = self.book.remove(target, jail);
        self.enforcer.apply(target, change)?;
        if target.is_host() {
            for j in &mut self.jails {
                j.window.forget(&target.addr());
            }
        }
        for r in &removed {
            self.unbanned(r.clone(), reason);
        }
        Ok(removed)
    }

    /// Does the allowlist (`[defaults] ignoreip`) overlap the target?
    pub fn allowlisted(&self, target: &Target) -> Option<&Target> {
        self.allowlisted_by(target)
    }

    /// A ban from another node, already checked: stored (with history only
    /// when remote bans count towards the ladder), then into the kernel
    /// (at the end of the batch inside [`batched`](Self::batched)).
    pub fn fleet_ban(&mut self, rec: BanRecord, history: bool) -> Result<()> {
        if let Some(a) = self.allowlisted_by(&rec.target) {
            bail!("{} overlaps the allowlist entry {a}", rec.target);
        }
        self.store
            .put_bans(std::slice::from_ref(&rec), history.then_some(rec.banned_at))?;
        if self.batching {
            self.staged.push(rec);
        } else {
            self.enforce_ban(&rec)?;
        }
        Ok(())
    }

    /// An operator's unban on another node: lift this host's bans of the
    /// target (fleet and local alike) that began at or before `at`.
    pub fn fleet_unban(&mut self, target: &Target, at: UnixSecs) -> Result<Vec<BanRecord>> {
        let jails: Vec<String> = self
            .book
            .records(target)
            .iter()
            .filter(|r| r.banned_at <= at)
            .map(|r| r.jail.clone())
            .collect();
        let mut removed = Vec::new();
        for j in jails {
            removed.extend(self.unban_because(target, Some(&j), "fleet")?);
        }
        Ok(removed)
    }

    /// Fleet bans held now, per origin node.
    pub fn fleet_origins(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for r in self.book.iter() {
            if let Some(o) = crate::fleet::apply::origin_of(&r.jail) {
                *out.entry(o.to_string()).or_default() += 1;
            }
        }
        out
    }

    /// Run `f` with ban writes sharing one commit (as [`on_lines`](Self::on_lines)
    /// does); the bans reach the kernel after the commit. On a failed
    /// commit none of them is applied.
    pub fn batched(&mut self, f: impl FnOnce(&mut AgentCore)) -> Result<()> {
        self.store.arm_batch();
        self.batching = true;
        f(self);
        self.batching = false;
        let staged = std::mem::take(&mut self.staged);
        if let Err(e) = self.store.commit_batch() {
            // Dropped with the transaction: the book never saw them.
            return Err(e.into());
        }
        for rec in &staged {
            if let Err(e) = self.enforce_ban(rec) {
                tracing::error!("jail {}: {e:#}", rec.jail);
            }
        }
        Ok(())
    }

    /// Lift every ban (of one jail, if given): `xban unban --all`.
    pub fn unban_all(&mut self, jail: Option<&str>) -> Result<Vec<BanRecord>> {
        let targets: std::collections::BTreeSet<Target> = self
            .book
            .iter()
            .filter(|r| jail.is_none_or(|j| r.jail == j))
            .map(|r| r.target)
            .collect();
        let mut removed = Vec::new();
        for t in targets {
            removed.extend(self.unban(&t, jail)?);
        }
        Ok(removed)
    }

    /// End the bans that are due; returns how many ended.
    pub fn expire(&mut self, now: UnixSecs) -> Result<usize> {
        let ended = self.book.expire(now);
        let n = ended.len();
        for (rec, change) in ended {
            self.store.delete_ban(&rec.target, Some(&rec.jail))?;
            self.enforcer.apply(&rec.target, change)?;
            self.unbanned(rec, "expired");
        }
        Ok(n)
    }

    pub fn prune_windows(&mut self, now: SystemTime) {
        for j in &mut self.jails {
            j.window.prune(now);
        }
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.subnets.prune(&self.escalation.subnet, secs);
    }

    pub fn bans(&self, jail: Option<&str>) -> Vec<BanView> {
        let fleet = jail == Some(crate::fleet::FLEET_JAIL);
        let mut v: Vec<BanView> = self
            .book
            .iter()
            .filter(|r| {
                jail.is_none_or(|j| r.jail == j)
                    || (fleet && crate::fleet::apply::is_fleet_jail(&r.jail))
            })
            .map(BanView::from)
            .collect();
        v.sort_by(|a, b| {
            (a.banned_at, &a.address, &a.jail).cmp(&(b.banned_at, &b.address, &b.jail))
        });
        v
    }

    /// `bans_now` is counted for all jails in one pass over the book by the
    /// caller: per jail it would be a pass each.
    fn jail_status(&self, j: &Jail, detailed: bool, bans_now: usize) -> JailStatus {
        let mut failing: Vec<(String, usize)> = if detailed {
            j.window
                .failing()
                .map(|(a, n)| (a.to_string(), n))
                .collect()
        } else {
            Vec::new()
        };
        failing.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        JailStatus {
            name: j.name().to_string(),
            failing_now: j.window.failing_count(),
            bans_now,
            counters: serde_json::to_value(&j.counters).unwrap_or_default(),
            following: Vec::new(),
            failing,
        }
    }

    pub fn status(&self, jail: Option<&str>) -> Result<StatusView> {
        // One pass over the book for every count: with a million bans each
        // pass costs tens of milliseconds, and the loop waits for them.
        let mut per_jail: HashMap<&str, usize> = HashMap::new();
        for r in self.book.iter() {
            *per_jail.entry(r.jail.as_str()).or_default() += 1;
        }
        let bans_now = |j: &Jail| per_jail.get(j.name()).copied().unwrap_or(0);
        let jails = match jail {
            Some(name) => {
                let j = self.jail_by_name(name)?;
                vec![self.jail_status(j, true, bans_now(j))]
            }
            None => self
                .jails
                .iter()
                .map(|j| self.jail_status(j, false, bans_now(j)))
                .collect(),
        };
        let (mut bans_drop, mut bans_tarpit) = (0, 0);
        for (_, r) in self.book.effective_all() {
            match r.class {
                BanClass::Drop => bans_drop += 1,
                BanClass::Tarpit => bans_tarpit += 1,
            }
        }
        Ok(StatusView {
            interfaces: self.interfaces.clone(),
            xdp_mode: self.xdp_mode.clone(),
            bans_active: bans_drop + bans_tarpit,
            bans_drop,
            bans_tarpit,
            map_entries: self.enforcer.entries().map(|e| e.len()).unwrap_or(0),
            xdp: self
                .enforcer
                .xdp_stats()?
                .map(|s| serde_json::to_value(s).unwrap_or_default()),
            tarpit: self.enforcer.steering_status(),
            jails,
            fleet: None,
        })
    }

    fn jail_by_name(&self, name: &str) -> Result<&Jail> {
        self.jails.iter().find(|j| j.name() == name).ok_or_else(|| {
            let names: Vec<&str> = self.jails.iter().map(|j| j.name()).collect();
            anyhow::anyhow!("no jail named `{name}` (jails: {})", names.join(", "))
        })
    }

    /// A manual ban (`xban ban`).
    pub fn manual_ban(
        &mut self,
        target: &str,
        jail: Option<&str>,
        bantime: Option<&str>,
        class: Option<&str>,
    ) -> Result<BanRecord> {
        let target: Target = target.parse()?;
        let (jail_name, jail_bantime, jail_class) = match jail {
            Some(name) => {
                let j = self.jail_by_name(name)?;
                (name.to_string(), j.settings.bantime, j.settings.class)
            }
            None => (
                MANUAL_JAIL.to_string(),
                self.default_bantime,
                self.default_class,
            ),
        };
        let bantime = match bantime {
            Some(b) => b
                .parse::<BanTime>()
                .map_err(|e| anyhow::anyhow!("--bantime: {e}"))?,
            None => jail_bantime,
        };
        let class = match class {
            Some(c) => c
                .parse::<BanClass>()
                .map_err(|e| anyhow::anyhow!("--class: {e}"))?,
            None => jail_class,
        };
        let now = now_secs();
        self.apply_ban(
            BanRecord {
                target,
                jail: jail_name,
                class,
                banned_at: now,
                expires_at: expiry(now, bantime),
                failures: 0,
                matches: Vec::new(),
            },
            now,
        )
    }

    /// Answer a control request.
    pub fn handle(&mut self, req: &Request) -> Reply {
        let result: Result<serde_json::Value> = (|| match req {
            Request::Status { jail } => Ok(serde_json::to_value(self.status(jail.as_deref())?)?),
            Request::Banned { jail } => {
                if let Some(j) = jail {
                    if j != MANUAL_JAIL && j != crate::fleet::FLEET_JAIL {
                        self.jail_by_name(j)?;
                    }
                }
                Ok(serde_json::to_value(self.bans(jail.as_deref()))?)
            }
            Request::Ban {
                target,
                jail,
                bantime,
                class,
            } => {
                let rec = self.manual_ban(
                    target,
                    jail.as_deref(),
                    bantime.as_deref(),
                    class.as_deref(),
                )?;
                Ok(serde_json::to_value(BanView::from(&rec))?)
            }
            Request::Unban {
                target: None,
                jail,
                all: true,
                ..
            } => {
                let removed = self.unban_all(jail.as_deref())?;
                let views: Vec<BanView> = removed.iter().map(BanView::from).collect();
                Ok(serde_json::to_value(views)?)
            }
            Request::Unban { target: None, .. } => {
                bail!("say which address or prefix to unban, or --all")
            }
            Request::Unban {
                target: Some(_),
                all: true,
                ..
            } => bail!("give an address or --all, not both"),
            Request::Unban {
                target: Some(target),
                jail,
                ..
            } => {
                let t: Target = target.parse()?;
                let removed = self.unban(&t, jail.as_deref())?;
                if removed.is_empty() {
                    let covering: Vec<String> = self
                        .book
                        .iter()
                        .filter(|r| r.target != t && r.target.covers(&t))
                        .map(|r| r.target.to_string())
                        .collect();
                    if covering.is_empty() {
                        bail!(
                            "{t} is not banned{}",
                            jail.as_ref()
                                .map(|j| format!(" by jail {j}"))
                                .unwrap_or_default()
                        );
                    }
                    bail!(
                        "{t} is not banned itself but lies in banned prefix {}: unban that prefix",
                        covering.join(", ")
                    );
                }
                let views: Vec<BanView> = removed.iter().map(BanView::from).collect();
                Ok(serde_json::to_value(views)?)
            }
            Request::Stats => Ok(serde_json::to_value(self.enforcer.xdp_stats()?)?),
            // The daemon answers these itself (they need the config file
            // and the running sources).
            Request::Teardown | Request::Reload | Request::Metrics => Ok(serde_json::Value::Null),
        })();
        match result {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::err(format!("{e:#}")),
        }
    }

    pub fn save_position(&mut self, key: &str, pos: &FilePosition) -> Result<()> {
        Ok(self
            .store
            .save_position(key, pos.dev, pos.inode, pos.offset)?)
    }

    pub fn store(&mut self) -> &mut BanStore {
        &mut self.store
    }
}

fn expiry(now: UnixSecs, bantime: BanTime) -> Option<UnixSecs> {
    match bantime {
        BanTime::Finite(d) => Some(now + d.as_secs() as i64),
        BanTime::Permanent => None,
    }
}

/// This machine's addresses (and loopback), for `ignoreself`.
pub fn self_addresses() -> Vec<Target> {
    let mut out: Vec<Target> = vec![
        "127.0.0.0/8".parse().expect("literal"),
        "::1".parse().expect("literal"),
    ];
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(a) = ifa.address else { continue };
            let ip: Option<IpAddr> = if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            };
            if let Some(ip) = ip {
                out.push(Target::host(ip));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::{Arc, Mutex};
    use std::time::UNIX_EPOCH;

    /// The kernel's view, as an enforcer would leave it.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<HashMap<Target, BanClass>>>);

    impl Recorder {
        /// An entry a previous agent left in the kernel.
        fn preload(&self, target: &str) {
            self.0
                .lock()
                .unwrap()
                .insert(target.parse().unwrap(), BanClass::Drop);
        }
    }

    impl Enforcer for Recorder {
        fn apply(&mut self, target: &Target, change: MapChange) -> Result<()> {
            let mut m = self.0.lock().unwrap();
            match change {
                MapChange::Set(c) => {
                    m.insert(*target, c);
                }
                MapChange::Remove => {
                    m.remove(target);
                }
                MapChange::Unchanged => {}
            }
            Ok(())
        }
        fn set_allowlist(&mut self, _list: &[Target]) -> Result<()> {
            Ok(())
        }
        fn entries(&self) -> Result<Vec<(Target, Option<BanClass>)>> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|(t, c)| (*t, Some(*c)))
                .collect())
        }
    }

    struct Fixture {
        core: AgentCore,
        kernel: Recorder,
        _dir: tempfile::TempDir,
    }

    fn fixture(extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[agent]\nfilters_dir = \"{}\"\n[defaults]\nmaxretry = 2\nbantime = \"10m\"\nignoreself = false\nignoreip = [\"198.51.100.0/24\"]\n\
             [jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['ssh fail from <HOST>$']\n\
             [jails.web]\nlogpath = [\"/l\"]\nfailregex = ['web fail from <HOST>$']\nbantime = \"1h\"\n{extra}",
            dir.path().join("none").display()
        );
        let cfg = Config::parse(&text).unwrap().validate().unwrap();
        let store = BanStore::open(dir.path()).unwrap();
        let kernel = Recorder::default();
        let core = AgentCore::new(&cfg, store, Box::new(kernel.clone()), &[]).unwrap();
        Fixture {
            core,
            kernel,
            _dir: dir,
        }
    }

    impl Fixture {
        /// Feed `jail` a failure line for `addr` logged at `log_time` (unix s).
        fn fail(&mut self, jail: usize, addr: &str, log_time: u64) -> Option<BanRecord> {
            let name = if jail == 0 { "ssh" } else { "web" };
            let line = SourceLine {
                origin: Arc::from("/l"),
                text: format!("{name} fail from {addr}"),
                read_at: std::time::SystemTime::now(),
                time: Some(UNIX_EPOCH + Duration::from_secs(log_time)),
            };
            self.core.on_line(name, &line).unwrap()
        }

        fn kernel(&self, t: &str) -> Option<BanClass> {
            self.kernel
                .0
                .lock()
                .unwrap()
                .get(&t.parse::<Target>().unwrap())
                .copied()
        }
    }

    const T0: u64 = 1_800_000_000;

    #[test]
    fn ladder_escalates_over_several_jails_in_log_time() {
        let mut f = fixture("");
        let a = "203.0.113.9";
        // Ban 1 (ssh) and ban 2 (web) within a day: the jails' own bantimes.
        assert!(f.fail(0, a, T0).is_none());
        let b1 = f.fail(0, a, T0 + 10).unwrap();
        assert_eq!(b1.expires_at.unwrap() - b1.banned_at, 600);
        f.fail(1, a, T0 + 3600);
        let b2 = f.fail(1, a, T0 + 3610).unwrap();
        assert_eq!(b2.expires_at.unwrap() - b2.banned_at, 3600);
        // Ban 3 within a day, in log time: one week, whichever jail.
        f.fail(0, a, T0 + 7200);
        let b3 = f.fail(0, a, T0 + 7210).unwrap();
        assert_eq!(b3.expires_at.unwrap() - b3.banned_at, 7 * 86_400);
        assert_eq!(b3.class, BanClass::Drop);
        // Bans 4 and 5, days later but within 30 d: the fifth is tarpit.
        f.fail(1, a, T0 + 5 * 86_400);
        f.fail(1, a, T0 + 5 * 86_400 + 1).unwrap();
        f.fail(0, a, T0 + 9 * 86_400);
        let b5 = f.fail(0, a, T0 + 9 * 86_400 + 1).unwrap();
        assert_eq!(
            (b5.class, b5.expires_at.unwrap() - b5.banned_at),
            (BanClass::Tarpit, 30 * 86_400)
        );
        assert_eq!(f.kernel(a), Some(BanClass::Tarpit));
    }

    #[test]
    fn per_jail_counting_when_overalljails_is_off() {
        let mut f = fixture("[escalation]\noveralljails = false\n");
        let a = "203.0.113.10";
        for (jail, t) in [(0, T0), (1, T0 + 100), (1, T0 + 200)] {
            f.fail(jail, a, t);
            f.fail(jail, a, t + 1).unwrap();
        }
        // Three bans overall, but only two by web: no escalation.
        assert_eq!(
            f.core.bans(Some("web"))[0].expires_at.unwrap() - f.core.bans(Some("web"))[0].banned_at,
            3600
        );
    }

    #[test]
    fn a_short_jails_unban_never_lifts_a_longer_ban() {
        let mut f = fixture("[escalation]\nenabled = false\n");
        let a = "203.0.113.11";
        f.fail(1, a, T0);
        f.fail(1, a, T0 + 1).unwrap(); // web: 1 h
        f.fail(0, a, T0 + 2);
        f.fail(0, a, T0 + 3).unwrap(); // ssh: 10 min
        let t: Target = a.parse().unwrap();
        assert_eq!(f.core.bans(None).len(), 2);
        // ssh's ban ends (expiry, or an unban of that jail): web's stays in the kernel.
        f.core.unban(&t, Some("ssh")).unwrap();
        assert_eq!(f.kernel(a), Some(BanClass::Drop));
        let ended = f.core.expire(now_secs() + 601).unwrap();
        assert_eq!(ended, 0, "only web's ban is left and it runs 1 h");
        assert_eq!(f.kernel(a), Some(BanClass::Drop));
        assert_eq!(f.core.expire(now_secs() + 3601).unwrap(), 1);
        assert_eq!(f.kernel(a), None);
    }

    #[test]
    fn subnet_widening_writes_a_cidr_entry() {
        let mut f = fixture(
            "[escalation.subnet]\nenabled = true\nhosts = 3\nwithin = \"1h\"\nbantime = \"1d\"\n",
        );
        for (i, host) in ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
            .iter()
            .enumerate()
        {
            f.fail(0, host, T0 + i as u64 * 10);
            f.fail(0, host, T0 + i as u64 * 10 + 1).unwrap();
        }
        assert_eq!(f.kernel("203.0.113.0/24"), Some(BanClass::Drop));
        let subnet = f.core.bans(Some(SUBNET_JAIL));
        assert_eq!(subnet.len(), 1);
        assert_eq!(subnet[0].address, "203.0.113.0/24");
        assert_eq!(subnet[0].expires_at.unwrap() - subnet[0].banned_at, 86_400);
    }

    #[test]
    fn subnet_widening_never_covers_the_allowlist() {
        // 198.51.100.0/24 is allowlisted; its hosts are never banned anyway,
        // and a manual ban of a prefix containing it is refused.
        let mut f = fixture("");
        let e = f
            .core
            .manual_ban("198.51.0.0/16", None, None, None)
            .unwrap_err();
        assert!(e.to_string().contains("allowlist"), "{e}");
        assert!(f.fail(0, "198.51.100.7", T0).is_none());
        assert!(
            f.fail(0, "198.51.100.7", T0 + 1).is_none(),
            "allowlisted: never banned"
        );
    }

    #[test]
    fn blocklists_load_before_reconcile_reload_and_append() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("block.txt");
        std::fs::write(
            &list,
            "# operator's list
203.0.113.50
203.0.113.64/26
bogus
198.51.100.7
",
        )
        .unwrap();
        let text = format!(
            "[agent]\nfilters_dir = \"{}\"\nblocklist_files = [\"{}\"]\nblocklist_append = true\n\
             [defaults]\nignoreip = [\"198.51.100.0/24\"]\n[jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>$']\n",
            dir.path().join("none").display(),
            list.display()
        );
        let cfg = Config::parse(&text).unwrap().validate().unwrap();
        let kernel = Recorder::default();
        // A previous agent left the blocklisted /26 in the kernel.
        kernel.preload("203.0.113.64/26");
        let mut core = AgentCore::new(
            &cfg,
            BanStore::open(dir.path()).unwrap(),
            Box::new(kernel.clone()),
            &[],
        )
        .unwrap();
        let report = core.restore(now_secs()).unwrap();
        assert_eq!(
            report.stale_map_entries, 0,
            "blocklisted entries are not removed at start"
        );
        let keys = |k: &Recorder| {
            let mut v: Vec<String> = k.0.lock().unwrap().keys().map(|t| t.to_string()).collect();
            v.sort();
            v
        };
        // The allowlisted 198.51.100.7 and the bogus line are skipped.
        assert_eq!(keys(&kernel), ["203.0.113.50", "203.0.113.64/26"]);
        assert!(core
            .bans(Some(BLOCKLIST_JAIL))
            .iter()
            .all(|b| b.expires_at.is_none()));

        // Edit the file: one entry gone, one added.
        std::fs::write(
            &list,
            "203.0.113.64/26
2001:db8:bad::/48
",
        )
        .unwrap();
        assert!(core.blocklists_changed());
        core.sync_blocklists(true).unwrap();
        assert_eq!(keys(&kernel), ["2001:db8:bad::/48", "203.0.113.64/26"]);

        // A permanent ban is appended with a dated comment, and read back.
        core.manual_ban("203.0.113.99", None, Some("permanent"), None)
            .unwrap();
        let text = std::fs::read_to_string(&list).unwrap();
        assert!(
            text.lines().last().unwrap().starts_with("203.0.113.99  # "),
            "{text}"
        );
        assert!(text.ends_with("jail=manual permanent\n"));
        core.sync_blocklists(true).unwrap();
        assert_eq!(core.bans(Some(BLOCKLIST_JAIL)).len(), 3);
        // Finite bans are not appended.
        core.manual_ban("203.0.113.98", None, Some("1h"), None)
            .unwrap();
        assert!(!std::fs::read_to_string(&list)
            .unwrap()
            .contains("203.0.113.98"));
    }

    #[test]
    fn restore_rebuilds_the_kernel_view_and_drops_stale_entries() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[agent]\nfilters_dir = \"{}\"\n[jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>$']\n",
            dir.path().join("none").display()
        );
        let cfg = Config::parse(&text).unwrap().validate().unwrap();
        let now = now_secs();
        {
            let mut store = BanStore::open(dir.path()).unwrap();
            let rec = |t: &str, exp: Option<i64>| BanRecord {
                target: t.parse().unwrap(),
                jail: "ssh".into(),
                class: BanClass::Drop,
                banned_at: now - 100,
                expires_at: exp,
                failures: 5,
                matches: vec![],
            };
            store
                .put_ban(&rec("203.0.113.1", Some(now + 100)), now)
                .unwrap();
            store
                .put_ban(&rec("203.0.113.2", Some(now - 1)), now)
                .unwrap();
            store.put_ban(&rec("2001:db8::/48", None), now).unwrap();
        }
        let kernel = Recorder::default();
        // Left by a previous agent: one live ban and one that was unbanned while down.
        kernel.preload("203.0.113.1");
        kernel.preload("203.0.113.99");
        let mut core = AgentCore::new(
            &cfg,
            BanStore::open(dir.path()).unwrap(),
            Box::new(kernel.clone()),
            &[],
        )
        .unwrap();
        let report = core.restore(now).unwrap();
        assert_eq!(
            report,
            RestoreReport {
                restored: 2,
                expired: 1,
                stale_map_entries: 1
            }
        );
        let mut left: Vec<String> = kernel
            .0
            .lock()
            .unwrap()
            .keys()
            .map(|t| t.to_string())
            .collect();
        left.sort();
        assert_eq!(left, vec!["2001:db8::/48", "203.0.113.1"]);
    }
}
