//! The agent: sources feed jails, jails ask for bans, bans go to the store and
//! then the kernel. [`AgentCore`] holds every piece of state and is driven by
//! one loop ([`run`]), so a control request never races a ban.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::addr::Target;
use crate::api::protocol::{Reply, Request};
use crate::backlog::StoreBacklog;
use crate::ban::{
    now_secs, BanBook, BanClass, BanEvent, BanEventKind, BanRecord, MapChange, UnixSecs,
    MANUAL_JAIL,
};
use crate::blocklist::{Blocklists, BLOCKLIST_JAIL};
use crate::config::ResolvedConfig;
use crate::enforce::Enforcer;
use crate::escalation::{self, EscalationConfig, SubnetTracker, SUBNET_JAIL};
use crate::guard::{BanGuard, BanOrigin, HostAddrs, Refusal};
use crate::jail::{BanRequest, Jail, JailVerdict};
use crate::source::file::FilePosition;
use crate::source::SourceLine;
use crate::store::BanStore;
use crate::units::BanTime;

mod dynamic;
#[cfg(test)]
mod dynamic_tests;
pub use dynamic::all_names;

/// How many banned targets one slice of a `banned` listing reads on the
/// event loop (about a millisecond): a ban waits for one slice at most,
/// not for a listing of a million.
pub const LISTING_SLICE: usize = 2048;

/// A `banned` reply being read from the book a slice at a time.
#[derive(Debug)]
pub struct BanListing {
    jail: Option<String>,
    /// The last target read: the next slice starts after it.
    after: Option<Target>,
    views: Vec<BanView>,
    finished: bool,
}

impl BanListing {
    fn new(jail: Option<&str>) -> BanListing {
        BanListing {
            jail: jail.map(str::to_string),
            after: None,
            views: Vec::new(),
            finished: false,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The bans read, oldest first. Sorting a million is done off the
    /// event loop, by the caller.
    pub fn into_sorted(mut self) -> Vec<BanView> {
        self.views.sort_by(|a, b| {
            (a.banned_at, &a.address, &a.jail).cmp(&(b.banned_at, &b.address, &b.jail))
        });
        self.views
    }
}

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
    /// The address's country, when a geo database is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
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
            country: None,
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

/// How long the event loop's turns take: every ban waits for the turn in
/// progress, so a slow one is a ban held back.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct LoopTurns {
    /// Turns taken (each handles one event: a batch of lines, a request, a
    /// tick, a slice of a listing...).
    pub turns: u64,
    /// Turns that took longer than [`LoopTurns::SLOW_MS`].
    pub slow_turns: u64,
    /// The longest turn since the agent started, and what it did.
    pub slowest_ms: f64,
    pub slowest_work: String,
    /// The same, per kind of work.
    #[serde(default)]
    pub by_work: std::collections::BTreeMap<String, WorkTurns>,
}

/// One kind of work's turns.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct WorkTurns {
    pub turns: u64,
    pub slowest_ms: f64,
}

impl LoopTurns {
    pub const SLOW_MS: f64 = 10.0;

    /// Count a turn of `work` that started at `started`.
    pub fn record(&mut self, work: &str, started: std::time::Instant) {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        self.turns += 1;
        if ms > Self::SLOW_MS {
            self.slow_turns += 1;
            tracing::debug!(work, ms, "slow event-loop turn");
        }
        if ms > self.slowest_ms {
            self.slowest_ms = ms;
            self.slowest_work = work.to_string();
        }
        if !self.by_work.contains_key(work) {
            self.by_work.insert(work.to_string(), WorkTurns::default());
        }
        if let Some(w) = self.by_work.get_mut(work) {
            w.turns += 1;
            w.slowest_ms = w.slowest_ms.max(ms);
        }
    }
}

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
    /// XDP fast-path occupancy (entries in the table, the overflow hash, the
    /// trie only; regions in trie fallback).
    #[serde(default)]
    pub fast_path: Option<crate::enforce::xdp::FastPathStatus>,
    /// XDP links per interface and their repairs (filled by the daemon).
    #[serde(default)]
    pub links: Option<serde_json::Value>,
    pub jails: Vec<JailStatus>,
    /// `[fleet]`: connection, stream and consumer positions, counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<serde_json::Value>,
    /// The daemon's event loop (absent outside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_loop: Option<LoopTurns>,
    /// Host names in ignoreip: their addresses now, and errors.
    #[serde(default)]
    pub dns: Vec<crate::dns::NameStatus>,
    /// Names that never resolved (nothing is allowlisted for them).
    #[serde(default)]
    pub dns_unresolved: Vec<String>,
    /// Geo rules in force, when a database is configured.
    #[serde(default)]
    pub geo: Option<serde_json::Value>,
    /// Active bans per country of the banned address (with a geo database).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub bans_by_country: std::collections::BTreeMap<String, usize>,
    /// Whether bans reach the database (disk full: a backlog waits).
    #[serde(default)]
    pub store: crate::backlog::StoreHealth,
    /// Bad lines and unreadable files of the blocklists.
    #[serde(default)]
    pub blocklists: crate::blocklist::BlocklistHealth,
    /// Bans the guard refused since start, by rule and origin.
    #[serde(default)]
    pub ban_refusals: Vec<RefusalCount>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RefusalCount {
    /// `min_prefix`, `allowlist` or `host_address`.
    pub rule: String,
    /// `manual`, `jail`, `blocklist` or `subnet`.
    pub origin: String,
    pub count: u64,
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
    /// (see [`AgentCore::on_lines`]), with their history time.
    staged: Vec<(BanRecord, UnixSecs)>,
    /// (target, jail) of `staged`: a jail's failures for an address it has
    /// just banned in this batch do not count either.
    staged_keys: std::collections::HashSet<(Target, String)>,
    batching: bool,
    /// Host names in ignoreip and geo rules.
    dynamic: dynamic::Dynamic,
    /// The batch's store write failed: its bans skip the store.
    batch_error: Option<String>,
    /// Bans enforced but not yet stored (full disk).
    backlog: StoreBacklog,
    /// What a ban may cover (min prefix, allowlist, this host's addresses).
    guard: BanGuard,
    refusals: std::collections::BTreeMap<(&'static str, &'static str), u64>,
}

/// A checked reload, ready to switch to ([`AgentCore::apply_reload`]).
pub struct PreparedReload {
    jails: Vec<Jail>,
    /// Jails whose source is new or changed.
    pub restart: Vec<String>,
}

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

impl AgentCore {
    /// A core whose idea of this host's addresses is `self_addrs` (plus
    /// loopback), fixed; the daemon uses [`with_host`](Self::with_host).
    pub fn new(
        cfg: &ResolvedConfig,
        store: BanStore,
        enforcer: Box<dyn Enforcer>,
        self_addrs: &[Target],
    ) -> Result<AgentCore> {
        AgentCore::with_host(cfg, store, enforcer, HostAddrs::fixed(self_addrs.to_vec()))
    }

    /// A core following `host` (the live view: [`HostAddrs::live`]) for
    /// `ignoreself` and the ban guard.
    pub fn with_host(
        cfg: &ResolvedConfig,
        store: BanStore,
        enforcer: Box<dyn Enforcer>,
        host: HostAddrs,
    ) -> Result<AgentCore> {
        let mut jails = Vec::new();
        for j in &cfg.jails {
            jails.push(
                Jail::with_host(j.clone(), host.clone())
                    .with_context(|| format!("jails.{}", j.name))?,
            );
        }
        let dynamic = dynamic::Dynamic::new(cfg, &host.current());
        let mut book = BanBook::default();
        book.set_labeller(dynamic::country_labeller(&dynamic.geo.db));
        Ok(AgentCore {
            allowlist: cfg.allowlist.clone(),
            jails,
            book,
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
            staged_keys: Default::default(),
            batching: false,
            batch_error: None,
            backlog: StoreBacklog::default(),
            dynamic,
            guard: BanGuard {
                min_prefix_v4: cfg.agent.min_prefix_v4,
                min_prefix_v6: cfg.agent.min_prefix_v6,
                allowlist: cfg.allowlist.clone(),
                host,
            },
            refusals: Default::default(),
        })
    }

    /// May `target` be banned? `extra_allow`: the banning jail's own
    /// ignoreip; `force` lifts the min-prefix rule only. The one question
    /// every ban asks (also for code adding new kinds of bans).
    pub fn may_ban(
        &self,
        target: &Target,
        extra_allow: &[Target],
        force: bool,
    ) -> Result<(), Refusal> {
        self.guard.check(target, extra_allow, force)
    }

    /// [`may_ban`](Self::may_ban), with a refusal logged and counted.
    fn guard_ban(
        &mut self,
        target: &Target,
        origin: BanOrigin,
        extra_allow: &[Target],
        force: bool,
    ) -> Result<(), Refusal> {
        let verdict = self.may_ban(target, extra_allow, force);
        if let Err(r) = &verdict {
            *self
                .refusals
                .entry((r.rule(), origin.as_str()))
                .or_default() += 1;
            tracing::warn!(rule = r.rule(), origin = origin.as_str(), "{r}");
        }
        verdict
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
    pub fn reload(&mut self, cfg: &ResolvedConfig) -> Result<Vec<String>> {
        let prepared = self.prepare_reload(cfg)?;
        self.apply_reload(prepared, cfg)
    }

    /// Everything a reload can refuse for, checked without changing
    /// anything: each jail is built anew (filters compiled).
    pub fn prepare_reload(&self, cfg: &ResolvedConfig) -> Result<PreparedReload> {
        let mut jails = Vec::new();
        let mut restart = Vec::new();
        for settings in &cfg.jails {
            let jail = Jail::with_host(settings.clone(), self.guard.host.clone())
                .with_context(|| format!("jails.{}", settings.name))?;
            match self.jails.iter().find(|j| j.name() == settings.name) {
                Some(old) if old.settings.source == settings.source => {}
                _ => restart.push(settings.name.clone()),
            }
            jails.push(jail);
        }
        Ok(PreparedReload { jails, restart })
    }

    /// Switch to a prepared reload. Returns the jails whose source must
    /// (re)start.
    pub fn apply_reload(
        &mut self,
        prepared: PreparedReload,
        cfg: &ResolvedConfig,
    ) -> Result<Vec<String>> {
        let PreparedReload { mut jails, restart } = prepared;
        for jail in &mut jails {
            if let Some(old) = self.jails.iter_mut().find(|j| j.name() == jail.name()) {
                jail.counters = std::mem::take(&mut old.counters);
                if old.settings.findtime == jail.settings.findtime
                    && old.settings.maxretry == jail.settings.maxretry
                {
                    std::mem::swap(&mut jail.window, &mut old.window);
                    jail.window.set_max_tracked(jail.settings.max_tracked);
                }
            }
        }
        self.guard.min_prefix_v4 = cfg.agent.min_prefix_v4;
        self.guard.min_prefix_v6 = cfg.agent.min_prefix_v6;
        self.jails = jails;
        // The allowlist map: the configured entries with the names'
        // current addresses and geo allow rules, written whole.
        self.dynamic.self_addrs = self.guard.host.current().to_vec();
        let old_db = self.dynamic.geo.db.clone();
        self.dynamic.configure(cfg);
        if !dynamic::same_db(&old_db, &self.dynamic.geo.db) {
            self.book
                .set_labeller(dynamic::country_labeller(&self.dynamic.geo.db));
        }
        self.refresh_jail_ignores();
        self.rebuild_allowlist()?;
        self.sync_geo(true)?;
        self.default_bantime = cfg.default_bantime;
        self.default_class = cfg.default_class;
        self.escalation = cfg.escalation.clone();
        self.dbpurgeage = cfg.dbpurgeage;
        self.blocklist_append = cfg.agent.blocklist_append;
        if self.blocklists.files() != cfg.agent.blocklist_files.as_slice() {
            self.blocklists = Blocklists::new(cfg.agent.blocklist_files.clone());
        }
        if let Err(e) = self.sync_blocklists(true) {
            tracing::error!("reload: blocklist files: {e:#}");
        }
        Ok(restart)
    }

    /// Load bans from the store (dropping expired ones), write the allowlist,
    /// and make the kernel's ban tries hold exactly the active bans. Entries a
    /// previous agent left are updated in place, never removed and re-added,
    /// so an active ban never stops dropping.
    pub fn restore(&mut self, now: UnixSecs) -> Result<RestoreReport> {
        // What expired while the agent was down: its kernel entries go. Any
        // other entry the store does not know is adopted, never removed: an
        // empty or new database must not unban what the kernel drops.
        let mut expired_targets = std::collections::HashSet::new();
        self.store.for_each_expired(now, |t| {
            expired_targets.insert(t);
        })?;
        let mut phases = Phases::start();
        let mut report = RestoreReport {
            expired: self.store.delete_expired(now)?,
            ..Default::default()
        };
        phases.mark("expire");
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
        self.rebuild_allowlist()?;
        self.enforcer.set_allowlist(&self.allowlist)?;
        self.refresh_jail_ignores();
        // Streamed without the matched lines: they stay in the database, the
        // agent never shows them, and a million bans' worth is gigabytes.
        let mut loader = self.book.loader();
        report.restored = self.store.for_each_ban(|rec| loader.push(rec))?;
        loader.finish();
        phases.mark("book");
        // Before the reconcile below, so blocklisted entries a previous
        // agent left in the kernel are kept, not removed and re-added.
        self.sync_blocklists(false)?;
        self.sync_geo(false)?;
        phases.mark("lists");
        let mut in_kernel = self.enforcer.entries_for_restore()?;
        phases.mark("kernel read");
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
        for (target, class) in self.book.effective_all() {
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
                self.enforcer.apply(&target, MapChange::Remove)?;
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
            if let Err(e) = self.store.put_bans(&adopted, None) {
                let waiting = adopted.iter().map(|r| (r.clone(), now)).collect();
                self.backlog.failed(waiting, &format!("{e:#}"), now);
            }
            let bantime = match self.default_bantime {
                BanTime::Finite(d) => crate::units::format_duration(d),
                BanTime::Permanent => "permanent".into(),
            };
            tracing::warn!(
                adopted = adopted.len(),
                "the kernel holds bans the ban database does not know (empty, new or replaced {}?): kept as jail={ADOPTED_JAIL}, class as in the kernel, bantime {bantime} ([defaults] bantime) from now",
                self.store.path().display()
            );
            for rec in adopted {
                self.book.add(rec);
            }
        }
        // Steering first, so tarpit-class addresses are in the set before
        // XDP is told to pass them.
        self.enforcer.sync_tarpit(&tarpit)?;
        for (target, class) in write {
            self.enforcer.apply(&target, MapChange::Set(class))?;
        }
        self.relabel_geo_entries()?;
        phases.mark("kernel write");
        report.phases = phases;
        Ok(report)
    }

    /// Feed one line to a jail; ban when it asks. Lines of a jail that a
    /// reload removed are dropped.
    pub fn on_line(&mut self, jail: &str, line: &SourceLine) -> Result<Option<BanRecord>> {
        let name = jail;
        let Some(jail) = self.jails.iter().position(|j| j.name() == name) else {
            return Ok(None);
        };
        let now = now_secs();
        let (book, staged) = (&self.book, &self.staged_keys);
        let j = &mut self.jails[jail];
        // Asked only for failure lines: no per-line copy of the name.
        let banned = |addr: IpAddr| {
            let t = Target::host(addr);
            book.has_active(&t, name, now) || staged.contains(&(t, name.to_string()))
        };
        let verdict = j.process_with(&line.text, line.read_at, line.time, &banned);
        match verdict {
            JailVerdict::Ban(req) => self.ban_from_jail(req),
            JailVerdict::AlreadyBanned(addr) => {
                tracing::debug!(jail = %name, %addr, "failure by an address the jail has banned already: not counted");
                Ok(None)
            }
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
    /// offenders costs one commit, and a ban is in the database before it is
    /// in the kernel. If the store cannot write (full disk), the bans go to
    /// the kernel anyway and wait in the backlog. Returns when each applied
    /// ban's line was read.
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
        self.staged_keys.clear();
        let staged = std::mem::take(&mut self.staged);
        let error = match self.batch_error.take() {
            Some(e) => Some(e),
            None => self.store.commit_batch().err().map(|e| format!("{e:#}")),
        };
        for (rec, _) in &staged {
            if let Err(e) = self.enforce_ban(rec) {
                tracing::error!("jail {}: {e:#}", rec.jail);
            }
        }
        if let Some(e) = error {
            if !staged.is_empty() {
                self.backlog.failed(staged, &e, now_secs());
            }
        }
        read_at
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
        match self.store.put_bans_at(&recs) {
            Ok(()) => self.backlog.written(),
            Err(e) => self
                .backlog
                .failed(Vec::new(), &format!("{e:#}"), now_secs()),
        }
    }

    pub fn store_health(&self) -> crate::backlog::StoreHealth {
        self.backlog.health()
    }

    /// A jail's ban, escalated by the address's history. The history is in
    /// log time, so replaying an old log escalates as watching it live did.
    fn ban_from_jail(&mut self, req: BanRequest) -> Result<Option<BanRecord>> {
        let now = now_secs();
        let event_at = req
            .at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(now);
        let target = Target::host(req.addr);
        let jail_allow: Vec<Target> = self
            .jails
            .iter()
            .find(|j| j.name() == req.jail)
            .map(|j| j.ignoreip())
            .unwrap_or_default();
        if self
            .guard_ban(&target, BanOrigin::Jail, &jail_allow, false)
            .is_err()
        {
            return Ok(None);
        }
        let mut req = req;
        req.bantime = self.bantime_for(&req.jail, req.addr, req.bantime);
        let per_jail = (!self.escalation.overalljails).then_some(req.jail.as_str());
        let store = &self.store;
        let mut lookup_error = None;
        let jail_name = req.jail.clone();
        let offence = crate::store::offence_key(&req.matches);
        let decision = escalation::decide(&self.escalation, req.bantime, req.class, |window| {
            let since = window.map(|w| event_at - w.as_secs() as i64).unwrap_or(0);
            store
                .earlier_ban_count(&target, per_jail, since, &jail_name, event_at, &offence)
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
        Ok(Some(rec))
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
        if self
            .guard_ban(&prefix, BanOrigin::Subnet, &[], false)
            .is_err()
        {
            return;
        }
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
        Blocklists::warn_bad_lines(&bad);
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
            let known = self.blocklisted.contains(&t);
            // A refusal is logged once per entry, when it first appears.
            let verdict = if known {
                self.may_ban(&t, &[], false)
            } else {
                self.guard_ban(&t, BanOrigin::Blocklist, &[], false)
            };
            if let Err(r) = verdict {
                if known {
                    tracing::warn!("blocklist entry {t}: {r}; unbanned");
                    let (removed, change) = self.book.remove(&t, Some(BLOCKLIST_JAIL));
                    if apply {
                        self.enforcer.apply(&t, change)?;
                    }
                    for r in removed {
                        self.unbanned(r, "refused");
                    }
                } else {
                    tracing::warn!("blocklist entry {t} skipped");
                }
                continue;
            }
            // The file, re-read, is the truth for its own entries: one
            // unbanned by hand comes back.
            let in_book = self
                .book
                .records(&t)
                .iter()
                .any(|r| r.jail == BLOCKLIST_JAIL);
            if !in_book {
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

    pub fn blocklists_changed(&mut self) -> bool {
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
    /// Callers have asked the guard ([`guard_ban`](Self::guard_ban)).
    fn apply_ban(&mut self, rec: BanRecord, event_at: UnixSecs) -> Result<BanRecord> {
        if self.batching {
            self.staged_keys.insert((rec.target, rec.jail.clone()));
            if self.batch_error.is_none() {
                if let Err(e) = self.store.put_ban(&rec, event_at) {
                    // The rest of the batch skips the store: the bans staged
                    // so far were rolled back with it and join the backlog.
                    self.store.abort_batch();
                    self.batch_error = Some(format!("{e:#}"));
                }
            }
            self.staged.push((rec.clone(), event_at));
            return Ok(rec);
        }
        let stored = self.store.put_ban(&rec, event_at);
        self.enforce_ban(&rec)?;
        if let Err(e) = stored {
            self.backlog
                .failed(vec![(rec.clone(), event_at)], &format!("{e:#}"), now_secs());
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
        self.events.push(BanEvent {
            kind: BanEventKind::Ban,
            record: rec.clone(),
            reason: "",
        });
        Ok(())
    }

    pub fn unban(&mut self, target: &Target, jail: Option<&str>) -> Result<Vec<BanRecord>> {
        self.refuse_geo_unban(target, jail)?;
        self.unban_because(target, jail, "request")
    }

    fn unban_because(
        &mut self,
        target: &Target,
        jail: Option<&str>,
        reason: &'static str,
    ) -> Result<Vec<BanRecord>> {
        self.store.delete_ban(target, jail)?;
        let (removed, change) = match jail {
            Some(j) => self.book.remove(target, Some(j)),
            // Every jail's ban but a geo rule's.
            None => {
                let jails: Vec<String> = self
                    .book
                    .records(target)
                    .iter()
                    .filter(|r| r.jail != dynamic_geo_jail())
                    .map(|r| r.jail.clone())
                    .collect();
                let mut removed = Vec::new();
                let mut change = MapChange::Unchanged;
                for j in jails {
                    let (r, c) = self.book.remove(target, Some(&j));
                    removed.extend(r);
                    if c != MapChange::Unchanged {
                        change = c;
                    }
                }
                (removed, change)
            }
        };
        self.backlog.forget(target, jail);
        self.enforcer.apply(target, change)?;
        if removed.iter().any(|r| r.jail == BLOCKLIST_JAIL) {
            tracing::warn!("{target} is listed in a blocklist file: it is banned again when the file is next re-read (on change, reload or restart); remove it from the file to unban it for good");
        }
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
        self.allowlist
            .iter()
            .find(|a| a.covers(target) || target.covers(a))
    }

    /// A ban from another node, already checked: stored (with history only
    /// when remote bans count towards the ladder), then into the kernel
    /// (at the end of the batch inside [`batched`](Self::batched)).
    pub fn fleet_ban(&mut self, rec: BanRecord, history: bool) -> Result<()> {
        // The local allowlist and this host's addresses always win; the
        // width rule for remote bans is [fleet]'s own (checked before).
        if let Err(r) = self.guard_ban(&rec.target, BanOrigin::Fleet, &[], true) {
            bail!("{r}");
        }
        self.store
            .put_bans(std::slice::from_ref(&rec), history.then_some(rec.banned_at))?;
        if self.batching {
            let at = rec.banned_at;
            self.staged.push((rec, at));
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
        for (jail, n) in &self.book.tally().records_by_jail {
            if let Some(o) = crate::fleet::apply::origin_of(jail) {
                *out.entry(o.to_string()).or_default() += n;
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
        self.staged_keys.clear();
        let staged = std::mem::take(&mut self.staged);
        if let Err(e) = self.store.commit_batch() {
            // Dropped with the transaction: the book never saw them.
            return Err(e.into());
        }
        for (rec, _) in &staged {
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
            .filter(|r| r.jail != dynamic_geo_jail())
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
        let mut store_error = None;
        for (rec, change) in ended {
            // A row the store cannot delete now (full disk) has expired
            // anyway: the next start deletes it. The kernel entry goes now.
            if let Err(e) = self.store.delete_ban(&rec.target, Some(&rec.jail)) {
                store_error = Some(e);
            }
            self.backlog.forget(&rec.target, Some(&rec.jail));
            self.enforcer.apply(&rec.target, change)?;
            self.unbanned(rec, "expired");
        }
        if let Some(e) = store_error {
            tracing::warn!("expired bans lifted, but not deleted from the store (done at the next start): {e:#}");
        }
        Ok(n)
    }

    pub fn prune_windows(&mut self, now: SystemTime) {
        for j in &mut self.jails {
            j.window.prune(now);
            j.flush_warnings();
        }
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.subnets.prune(&self.escalation.subnet, secs);
    }

    /// Every ban (of one jail), sorted as `xban banned` shows them.
    pub fn bans(&self, jail: Option<&str>) -> Vec<BanView> {
        let mut listing = BanListing::new(jail);
        while !listing.is_finished() {
            self.continue_listing(&mut listing, usize::MAX);
        }
        listing.into_sorted()
    }

    /// A `banned` listing, checked and started; [`continue_listing`]
    /// reads it a slice at a time.
    ///
    /// [`continue_listing`]: Self::continue_listing
    pub fn start_listing(&self, jail: Option<&str>) -> Result<BanListing> {
        if let Some(j) = jail {
            self.known_ban_owner(j)?;
        }
        Ok(BanListing::new(jail))
    }

    /// Read up to `max_targets` more banned targets into the listing. The
    /// book may change between slices: each target is read once, as it is
    /// when its slice is read.
    pub fn continue_listing(&self, listing: &mut BanListing, max_targets: usize) {
        if listing.after.is_none() && listing.views.capacity() == 0 {
            // Room for all of them at the first slice (not while queued):
            // growing a vector of a million views copies it, in one turn.
            let tally = self.book.tally();
            let records = match listing.jail.as_deref() {
                Some(j) if j != crate::fleet::FLEET_JAIL => {
                    tally.records_by_jail.get(j).copied().unwrap_or(0)
                }
                _ => tally.records_by_jail.values().sum(),
            };
            listing.views.reserve_exact(records);
        }
        let fleet = listing.jail.as_deref() == Some(crate::fleet::FLEET_JAIL);
        let mut read = 0;
        let mut last = None;
        for (t, recs) in self.book.targets_after(listing.after.as_ref()) {
            if read == max_targets {
                break;
            }
            read += 1;
            last = Some(t);
            for r in recs {
                let wanted = listing.jail.as_deref().is_none_or(|j| r.jail == j)
                    || (fleet && crate::fleet::apply::is_fleet_jail(&r.jail));
                if wanted {
                    let mut b = BanView::from(&r);
                    b.country = self.country_of(r.target.addr());
                    listing.views.push(b);
                }
            }
        }
        match last {
            Some(t) if read == max_targets => listing.after = Some(t),
            _ => listing.finished = true,
        }
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
        // Counts kept as bans change: no pass over the book, which with a
        // million bans holds the loop for tens of milliseconds.
        let tally = self.book.tally();
        let bans_now = |j: &Jail| tally.records_by_jail.get(j.name()).copied().unwrap_or(0);
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
        let (bans_drop, bans_tarpit) = (tally.drop, tally.tarpit);
        Ok(StatusView {
            interfaces: self.interfaces.clone(),
            xdp_mode: self.xdp_mode.clone(),
            bans_active: bans_drop + bans_tarpit,
            bans_drop,
            bans_tarpit,
            // One entry per banned target. Not read back from the kernel: a
            // walk of a million-entry trie holds the loop for seconds.
            map_entries: self.book.len_targets(),
            xdp: self
                .enforcer
                .xdp_stats()?
                .map(|s| serde_json::to_value(s).unwrap_or_default()),
            tarpit: self.enforcer.steering_status(),
            fast_path: self.enforcer.fast_path(),
            links: None,
            jails,
            store: self.backlog.health(),
            blocklists: self.blocklists.health(),
            ban_refusals: self
                .refusals
                .iter()
                .map(|((rule, origin), count)| RefusalCount {
                    rule: rule.to_string(),
                    origin: origin.to_string(),
                    count: *count,
                })
                .collect(),
            dns: self.dns_status(),
            dns_unresolved: self.dynamic.names.unresolved(),
            geo: self.geo_status(),
            bans_by_country: self.bans_by_country(),
            fleet: None,
            event_loop: None,
        })
    }

    fn bans_by_country(&self) -> std::collections::BTreeMap<String, usize> {
        if self.dynamic.geo.db.is_none() {
            return Default::default();
        }
        self.book.tally().by_label.clone()
    }

    fn jail_by_name(&self, name: &str) -> Result<&Jail> {
        self.jails.iter().find(|j| j.name() == name).ok_or_else(|| {
            let names: Vec<&str> = self.jails.iter().map(|j| j.name()).collect();
            anyhow::anyhow!("no jail named `{name}` (jails: {})", names.join(", "))
        })
    }

    /// `--jail NAME` of `banned`/`unban`: a configured jail, one of the
    /// agent's own ban owners (manual, blocklist, subnet), or a jail that a
    /// reload removed whose bans are still active. Anything else is a typo,
    /// and saying "nothing to unban" would hide it.
    fn known_ban_owner(&self, name: &str) -> Result<()> {
        if self.jails.iter().any(|j| j.name() == name)
            || crate::guard::RESERVED_JAIL_NAMES.contains(&name)
            || self.book.has_jail(name)
        {
            return Ok(());
        }
        let mut names: Vec<&str> = self.jails.iter().map(|j| j.name()).collect();
        names.extend([MANUAL_JAIL, BLOCKLIST_JAIL, SUBNET_JAIL]);
        bail!(
            "no jail named `{name}` (jails: {}): check the name with `xban status`",
            names.join(", ")
        )
    }

    /// A manual ban (`xban ban`).
    pub fn manual_ban(
        &mut self,
        target: &str,
        jail: Option<&str>,
        bantime: Option<&str>,
        class: Option<&str>,
    ) -> Result<BanRecord> {
        self.manual_ban_with(target, jail, bantime, class, false)
    }

    /// `xban ban [--force]`: `force` lifts the min-prefix rule only.
    pub fn manual_ban_with(
        &mut self,
        target: &str,
        jail: Option<&str>,
        bantime: Option<&str>,
        class: Option<&str>,
        force: bool,
    ) -> Result<BanRecord> {
        let target: Target = target.parse()?;
        let (jail_name, jail_bantime, jail_class, jail_allow) = match jail {
            Some(name) => {
                let j = self.jail_by_name(name)?;
                (
                    name.to_string(),
                    j.settings.bantime,
                    j.settings.class,
                    j.ignoreip(),
                )
            }
            None => (
                MANUAL_JAIL.to_string(),
                self.default_bantime,
                self.default_class,
                Vec::new(),
            ),
        };
        let bantime = match bantime {
            Some(b) => {
                let b = b
                    .parse::<BanTime>()
                    .map_err(|e| anyhow::anyhow!("--bantime: {e}"))?;
                if b == BanTime::Finite(Duration::ZERO) {
                    bail!("--bantime: a ban of 0 s ends as it starts: give a duration like 1h, or permanent");
                }
                b
            }
            None => jail_bantime,
        };
        let class = match class {
            Some(c) => c
                .parse::<BanClass>()
                .map_err(|e| anyhow::anyhow!("--class: {e}"))?,
            None => jail_class,
        };
        // An operator's ban is checked against the host's addresses of this
        // very moment.
        self.guard.host.refresh();
        self.guard_ban(&target, BanOrigin::Manual, &jail_allow, force)?;
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
                let mut listing = self.start_listing(jail.as_deref())?;
                while !listing.is_finished() {
                    self.continue_listing(&mut listing, usize::MAX);
                }
                Ok(serde_json::to_value(listing.into_sorted())?)
            }
            Request::Ban {
                target,
                jail,
                bantime,
                class,
                force,
            } => {
                let rec = self.manual_ban_with(
                    target,
                    jail.as_deref(),
                    bantime.as_deref(),
                    class.as_deref(),
                    *force,
                )?;
                Ok(serde_json::to_value(BanView::from(&rec))?)
            }
            Request::Unban {
                target: None,
                jail,
                all: true,
                ..
            } => {
                if let Some(j) = jail {
                    self.known_ban_owner(j)?;
                }
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
                if let Some(j) = jail {
                    self.known_ban_owner(j)?;
                }
                let removed = self.unban(&t, jail.as_deref())?;
                if removed.is_empty() {
                    let covering: Vec<String> = self
                        .book
                        .covering(&t)
                        .iter()
                        .map(Target::to_string)
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
            Request::Geo { address } => Ok(serde_json::to_value(self.geo_info(address)?)?),
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

fn dynamic_geo_jail() -> &'static str {
    crate::geo::GEO_JAIL
}

fn expiry(now: UnixSecs, bantime: BanTime) -> Option<UnixSecs> {
    match bantime {
        // Saturating: a duration can never wrap the expiry into the past.
        BanTime::Finite(d) => {
            Some(now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
        }
        BanTime::Permanent => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::{Arc, Mutex};
    use std::time::UNIX_EPOCH;

    /// The kernel's view, as an enforcer would leave it.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<std::collections::HashMap<Target, BanClass>>>);

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

    fn kernel_has(k: &Recorder, t: &str) -> bool {
        k.0.lock().unwrap().contains_key(&t.parse().unwrap())
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
                end: Default::default(),
            };
            self.core.on_line(name, &line).unwrap()
        }

        /// Every finite ban runs out (as time passes between offences).
        fn bans_run_out(&mut self) {
            self.core.expire(now_secs() + 20 * 365 * 86_400).unwrap();
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
        f.bans_run_out();
        // Ban 3 within a day, in log time: one week, whichever jail.
        f.fail(0, a, T0 + 7200);
        let b3 = f.fail(0, a, T0 + 7210).unwrap();
        assert_eq!(b3.expires_at.unwrap() - b3.banned_at, 7 * 86_400);
        assert_eq!(b3.class, BanClass::Drop);
        f.bans_run_out();
        // Bans 4 and 5, days later but within 30 d: the fifth is tarpit.
        f.fail(1, a, T0 + 5 * 86_400);
        f.fail(1, a, T0 + 5 * 86_400 + 1).unwrap();
        f.bans_run_out();
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
            f.bans_run_out();
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
        core.blocklists_changed();
        std::thread::sleep(crate::blocklist::QUIET);
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
        // A manual unban of a listed entry lasts until the file is re-read:
        // the file is the truth for its own entries.
        core.unban(&"203.0.113.99".parse().unwrap(), None).unwrap();
        assert!(!kernel_has(&kernel, "203.0.113.99"));
        core.sync_blocklists(true).unwrap();
        assert!(kernel_has(&kernel, "203.0.113.99"), "back from the file");
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
        // Left by a previous agent: one live ban, one that expired while
        // down, and one the store does not know.
        kernel.preload("203.0.113.1");
        kernel.preload("203.0.113.2");
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
            (
                report.restored,
                report.expired,
                report.stale_map_entries,
                report.adopted
            ),
            (2, 1, 1, 1)
        );
        let mut left: Vec<String> = kernel
            .0
            .lock()
            .unwrap()
            .keys()
            .map(|t| t.to_string())
            .collect();
        left.sort();
        assert_eq!(left, vec!["2001:db8::/48", "203.0.113.1", "203.0.113.99"]);
        let adopted = core.bans(Some(ADOPTED_JAIL));
        assert_eq!(adopted.len(), 1);
        assert_eq!(adopted[0].address, "203.0.113.99");
    }

    #[test]
    fn a_full_store_still_bans_and_writes_the_backlog_when_space_returns() {
        let mut f = fixture("[escalation]\nenabled = false\n");
        // The database may not grow: writes fail with SQLITE_FULL, as on a
        // full disk.
        let pages = f.core.store.page_count();
        f.core.store.set_max_pages(pages);
        let line = |addr: &str| {
            (
                Arc::<str>::from("ssh"),
                SourceLine {
                    origin: Arc::from("/l"),
                    text: format!("ssh fail from {addr}"),
                    read_at: std::time::SystemTime::now(),
                    time: Some(UNIX_EPOCH + Duration::from_secs(T0)),
                    end: Default::default(),
                },
            )
        };
        // Enough bans in one batch to need new pages.
        let addrs: Vec<String> = (0..400).map(|i| format!("2001:db8:9::{i:x}")).collect();
        let batch: Vec<_> = addrs.iter().flat_map(|a| [line(a), line(a)]).collect();
        let banned = f.core.on_lines(&batch);
        assert_eq!(banned.len(), 400, "every ban applied");
        for a in &addrs {
            assert_eq!(f.kernel(a), Some(BanClass::Drop), "{a} in the kernel");
        }
        let h = f.core.store_health();
        assert_eq!(h.backlog, 400);
        assert!(h.failing_since.is_some() && h.write_failures >= 1);
        assert!(h.last_error.unwrap().contains("full"), "names the cause");
        assert_eq!(f.core.status(None).unwrap().store.backlog, 400);
        // Still full: the retry fails and keeps them.
        f.core.retry_store();
        assert_eq!(f.core.store_health().backlog, 400);
        assert_eq!(f.core.store.load_bans().unwrap().len(), 0);
        // Space again: the next retry (after RETRY_EVERY) writes them all.
        f.core.store.set_max_pages(1 << 30);
        f.core.backlog = {
            let mut b = StoreBacklog::default();
            let pending: Vec<_> = f.core.backlog.pending().cloned().collect();
            b.failed(pending, "test", 0);
            b
        };
        f.core.retry_store();
        assert_eq!(f.core.store_health().backlog, 0);
        assert_eq!(f.core.store_health().failing_since, None);
        let rows = f.core.store.load_bans().unwrap();
        assert_eq!(rows.len(), 400);
        assert!(rows.iter().all(|r| r.jail == "ssh"));
    }

    #[test]
    fn an_empty_database_adopts_the_kernels_bans_instead_of_removing_them() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[agent]\nfilters_dir = \"{}\"\n[defaults]\nbantime = \"2h\"\n[jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>$']\n",
            dir.path().join("none").display()
        );
        let cfg = Config::parse(&text).unwrap().validate().unwrap();
        // A 0-byte database file, as a full disk or an operator leaves it.
        std::fs::write(dir.path().join(crate::sys::paths::STATE_DB), b"").unwrap();
        let kernel = Recorder::default();
        kernel.preload("203.0.113.5");
        kernel.preload("2001:db8:1::/48");
        kernel
            .0
            .lock()
            .unwrap()
            .insert("203.0.113.6".parse().unwrap(), BanClass::Tarpit);
        let now = now_secs();
        let mut core = AgentCore::new(
            &cfg,
            BanStore::open(dir.path()).unwrap(),
            Box::new(kernel.clone()),
            &[],
        )
        .unwrap();
        let report = core.restore(now).unwrap();
        assert_eq!((report.adopted, report.stale_map_entries), (3, 0));
        assert_eq!(kernel.0.lock().unwrap().len(), 3, "nothing removed");
        assert_eq!(
            kernel.0.lock().unwrap()[&"203.0.113.6".parse().unwrap()],
            BanClass::Tarpit,
            "class kept"
        );
        drop(core);
        // Stored: the next start knows them as adopted bans of [defaults] bantime.
        let store = BanStore::open(dir.path()).unwrap();
        let rows = store.load_bans().unwrap();
        assert_eq!(rows.len(), 3);
        for r in &rows {
            assert_eq!(r.jail, ADOPTED_JAIL);
            let left = r.expires_at.unwrap() - now;
            assert!((7199..=7201).contains(&left), "{left}");
        }
        let tarpit = rows.iter().find(|r| r.target.to_string() == "203.0.113.6");
        assert_eq!(tarpit.unwrap().class, BanClass::Tarpit);
    }

    /// A core on `config` (after an `[agent]` header), with this host's
    /// addresses fixed to `host`.
    fn core_on(config: &str, host: &[&str]) -> (AgentCore, Recorder, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[agent]\nfilters_dir = \"{}\"\n{config}",
            dir.path().join("none").display()
        );
        let cfg = Config::parse(&text).unwrap().validate().unwrap();
        let kernel = Recorder::default();
        let host: Vec<Target> = host.iter().map(|h| h.parse().unwrap()).collect();
        let core = AgentCore::with_host(
            &cfg,
            BanStore::open(dir.path()).unwrap(),
            Box::new(kernel.clone()),
            HostAddrs::fixed(host),
        )
        .unwrap();
        (core, kernel, dir)
    }

    fn line(text: String, log_time: u64) -> (Arc<str>, SourceLine) {
        (
            Arc::from("ssh"),
            SourceLine {
                origin: Arc::from("/l"),
                text,
                read_at: std::time::SystemTime::now(),
                time: Some(UNIX_EPOCH + Duration::from_secs(log_time)),
                end: Default::default(),
            },
        )
    }

    const SSH: &str = "[defaults]\nmaxretry = 3\nbantime = \"10m\"\n\
        [jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['ssh fail from <HOST>$']\n";

    #[test]
    fn offences_in_the_same_second_of_log_time_each_count() {
        // Log time has whole seconds: three offences, each lifted by hand,
        // all written within one second, are three bans; the third reaches
        // the ladder's first step (3 bans within 1d: 1w).
        let (mut core, _k, _dir) = core_on(SSH, &[]);
        let a = "203.0.113.41";
        let t: Target = a.parse().unwrap();
        for offence in 0..3u64 {
            let lines: Vec<_> = (0..3)
                .map(|i| line(format!("[{offence}{i}] ssh fail from {a}"), T0))
                .collect();
            core.on_lines(&lines);
            let bans = core.bans(None);
            assert_eq!(bans.len(), 1, "offence {offence}: {bans:?}");
            let len = bans[0].expires_at.unwrap() - bans[0].banned_at;
            assert_eq!(
                len,
                if offence < 2 { 600 } else { 7 * 86400 },
                "offence {offence}"
            );
            core.unban(&t, None).unwrap();
        }
        assert_eq!(core.store().ban_count_since(&t, None, 0).unwrap(), 3);
    }

    #[test]
    fn a_burst_is_one_ban_and_a_replay_records_nothing_twice() {
        let (mut core, _k, dir) = core_on(SSH, &[]);
        let a = "203.0.113.40";
        // 15 failures written at once, read in one batch.
        let burst: Vec<_> = (0..15)
            .map(|i| line(format!("ssh fail from {a}"), T0 + i / 5))
            .collect();
        core.on_lines(&burst);
        let bans = core.bans(None);
        assert_eq!(bans.len(), 1, "{bans:?}");
        assert_eq!(
            bans[0].expires_at.unwrap() - bans[0].banned_at,
            600,
            "not escalated"
        );
        let t: Target = a.parse().unwrap();
        assert_eq!(core.store().ban_count_since(&t, None, 0).unwrap(), 1);
        let st = core.status(Some("ssh")).unwrap();
        assert_eq!(st.jails[0].counters["failures_while_banned"], 12);
        assert_eq!(
            st.jails[0].failing_now, 0,
            "failures while banned are not kept"
        );
        drop(core);

        // A crash before the file position was saved: the next agent reads
        // the same lines again. The ban is restored; nothing is added.
        let reopen = || {
            let text = format!(
                "[agent]\nfilters_dir = \"{}\"\n{SSH}",
                dir.path().join("none").display()
            );
            let cfg = Config::parse(&text).unwrap().validate().unwrap();
            let mut core = AgentCore::new(
                &cfg,
                BanStore::open(dir.path()).unwrap(),
                Box::new(Recorder::default()),
                &[],
            )
            .unwrap();
            core.restore(now_secs()).unwrap();
            core
        };
        let mut core = reopen();
        core.on_lines(&burst);
        assert_eq!(core.bans(None).len(), 1);
        assert_eq!(core.store().ban_count_since(&t, None, 0).unwrap(), 1);
        // Even when the ban has run out by then, the replay's ban is the
        // same offence: the history holds it once and it is not escalated.
        core.expire(now_secs() + 601).unwrap();
        assert!(core.bans(None).is_empty());
        core.on_lines(&burst);
        let bans = core.bans(None);
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].expires_at.unwrap() - bans[0].banned_at, 600);
        assert_eq!(core.store().ban_count_since(&t, None, 0).unwrap(), 1);
    }

    #[test]
    fn the_guard_refuses_wide_allowlisted_and_own_addresses() {
        let (mut core, kernel, _d) = core_on(SSH, &["203.0.113.1", "2001:db8:1::1"]);
        let refused = |core: &mut AgentCore, t: &str, force: bool| {
            core.manual_ban_with(t, None, None, None, force)
                .unwrap_err()
                .to_string()
        };
        // With an empty ignoreip, the whole Internet is still refused.
        for wide in ["0.0.0.0/0", "::/0", "2000::/3", "8000::/1", "10.0.0.0/7"] {
            let e = refused(&mut core, wide, false);
            assert!(
                e.contains("min_prefix_v") && e.contains("--force"),
                "{wide}: {e}"
            );
        }
        // --force lifts the width rule only.
        core.manual_ban_with("4000::/3", None, None, None, true)
            .unwrap();
        let e = refused(&mut core, "0.0.0.0/0", true);
        assert!(e.contains("own address"), "{e}");
        // This host's own address, or a prefix holding it.
        for own in [
            "203.0.113.1",
            "203.0.113.0/24",
            "127.0.0.1",
            "2001:db8:1::/64",
        ] {
            let e = refused(&mut core, own, false);
            assert!(e.contains("own address"), "{own}: {e}");
        }
        core.manual_ban("203.0.113.2", None, None, None).unwrap();
        let st = core.status(None).unwrap();
        let count = |rule: &str| {
            st.ban_refusals
                .iter()
                .filter(|r| r.rule == rule && r.origin == "manual")
                .map(|r| r.count)
                .sum::<u64>()
        };
        assert_eq!((count("min_prefix"), count("host_address")), (5, 5));
        assert_eq!(
            kernel.0.lock().unwrap().len(),
            2,
            "only the two allowed bans"
        );
    }

    #[test]
    fn jail_subnet_and_blocklist_bans_pass_the_guard_too() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("block.txt");
        std::fs::write(&list, "0.0.0.0/1\n203.0.113.1\n198.51.100.0/24\n").unwrap();
        let (mut core, kernel, _d) = core_on(
            &format!(
                "blocklist_files = [\"{}\"]\n[defaults]\nmaxretry = 1\nignoreself = false\n\
                 [escalation.subnet]\nenabled = true\nhosts = 2\n\
                 [jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['ssh fail from <HOST>$']\n",
                list.display()
            ),
            &["203.0.113.1"],
        );
        core.restore(now_secs()).unwrap();
        // Blocklist: the /1 and the host's own address are skipped.
        let keys = || {
            let mut v: Vec<String> = kernel
                .0
                .lock()
                .unwrap()
                .keys()
                .map(|t| t.to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(keys(), ["198.51.100.0/24"]);
        // A jail with ignoreself = false still never bans this host.
        core.on_lines(&[line("ssh fail from 203.0.113.1".into(), T0)]);
        assert!(core.bans(Some("ssh")).is_empty());
        // Two hosts of the host's own /24 banned: the /24 would cover it.
        core.on_lines(&[line("ssh fail from 203.0.113.7".into(), T0)]);
        core.on_lines(&[line("ssh fail from 203.0.113.8".into(), T0 + 1)]);
        assert!(core.bans(Some(SUBNET_JAIL)).is_empty());
        assert_eq!(keys(), ["198.51.100.0/24", "203.0.113.7", "203.0.113.8"]);
        let st = core.status(None).unwrap();
        let mut seen: Vec<(String, String)> = st
            .ban_refusals
            .iter()
            .map(|r| (r.rule.clone(), r.origin.clone()))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("host_address".into(), "blocklist".into()),
                ("host_address".into(), "jail".into()),
                ("host_address".into(), "subnet".into()),
                ("min_prefix".into(), "blocklist".into()),
            ]
        );
        let text = crate::api::metrics::Metrics::default().render(&st, 1);
        assert!(
            text.contains("xban_ban_refusals_total{rule=\"host_address\",origin=\"subnet\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn ignoreself_follows_the_hosts_addresses() {
        let (mut core, _k, _d) = core_on(
            "[defaults]\nmaxretry = 1\n[jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['ssh fail from <HOST>$']\n",
            &[],
        );
        core.guard
            .host
            .set_fixed(vec!["203.0.113.50".parse().unwrap()]);
        core.on_lines(&[line("ssh fail from 203.0.113.50".into(), T0)]);
        assert!(core.bans(None).is_empty());
        let st = core.status(Some("ssh")).unwrap();
        assert_eq!(st.jails[0].counters["ignored_addresses"], 1);
        assert!(st.ban_refusals.is_empty(), "ignored, not even asked");
        // The address moves away: its failures count again.
        core.guard.host.set_fixed(vec![]);
        core.on_lines(&[line("ssh fail from 203.0.113.50".into(), T0 + 1)]);
        assert_eq!(core.bans(None).len(), 1);
    }

    /// A listing read a few targets at a time, with bans added and lifted
    /// between slices, lists every ban that stayed once, sorted, and the
    /// counts in status agree with the book.
    #[test]
    fn a_listing_in_slices_equals_the_whole_and_survives_changes() {
        let mut f = fixture("");
        for i in 1..=20 {
            f.core
                .manual_ban(&format!("203.0.113.{i}"), None, None, None)
                .unwrap();
        }
        for i in 1..=5 {
            f.fail(1, &format!("2001:db8::{i}"), 1000);
            f.fail(1, &format!("2001:db8::{i}"), 1001);
        }
        let whole = f.core.bans(None);
        assert_eq!(whole.len(), 25);
        let mut listing = f.core.start_listing(None).unwrap();
        let mut slices = 0;
        while !listing.is_finished() {
            f.core.continue_listing(&mut listing, 3);
            slices += 1;
            if slices == 2 {
                // Behind the cursor (not listed) and ahead of it (listed).
                f.core.manual_ban("10.9.0.0/16", None, None, None).unwrap();
                f.core
                    .unban(&"203.0.113.20".parse().unwrap(), None)
                    .unwrap();
                f.core.manual_ban("2001:db8::ff", None, None, None).unwrap();
            }
        }
        assert!(slices >= 9, "{slices} slices");
        let listed = listing.into_sorted();
        let addrs: Vec<&str> = listed.iter().map(|v| v.address.as_str()).collect();
        assert!(
            !addrs.contains(&"203.0.113.20"),
            "lifted ahead of the cursor"
        );
        assert!(addrs.contains(&"2001:db8::ff"), "added ahead of the cursor");
        assert!(!addrs.contains(&"10.9.0.0/16"), "added behind the cursor");
        assert_eq!(listed.len(), 25);
        let mut unique = addrs.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), listed.len());
        assert!(listed
            .windows(2)
            .all(|w| (w[0].banned_at, &w[0].address) <= (w[1].banned_at, &w[1].address)));
        // One jail's listing.
        let mut web = f.core.start_listing(Some("web")).unwrap();
        while !web.is_finished() {
            f.core.continue_listing(&mut web, 2);
        }
        assert_eq!(web.into_sorted().len(), 5);
        assert!(f.core.start_listing(Some("nope")).is_err());
        let st = f.core.status(None).unwrap();
        assert_eq!(st.bans_active, f.core.bans(None).len());
        assert_eq!(
            st.jails.iter().find(|j| j.name == "web").unwrap().bans_now,
            5
        );
        assert_eq!(f.core.book.tally(), &f.core.book.recount());
    }

    #[test]
    fn unknown_jails_in_unban_and_banned_are_named() {
        let (mut core, _k, _d) = core_on(SSH, &[]);
        core.manual_ban("203.0.113.9", None, None, None).unwrap();
        for req in [
            Request::Unban {
                target: None,
                jail: Some("nope".into()),
                all: true,
                local: false,
            },
            Request::Unban {
                target: Some("203.0.113.9".into()),
                jail: Some("nope".into()),
                all: false,
                local: false,
            },
            Request::Banned {
                jail: Some("nope".into()),
            },
        ] {
            let r = core.handle(&req);
            let e = r.error.unwrap_or_default();
            assert!(
                !r.ok && e.contains("no jail named `nope`") && e.contains("ssh"),
                "{req:?}: {e}"
            );
        }
        assert_eq!(core.bans(None).len(), 1, "nothing was unbanned");
        for ok in ["ssh", MANUAL_JAIL, BLOCKLIST_JAIL, SUBNET_JAIL] {
            let r = core.handle(&Request::Unban {
                target: None,
                jail: Some(ok.into()),
                all: true,
                local: false,
            });
            assert!(r.ok, "{ok}: {:?}", r.error);
        }
    }

    #[test]
    fn ban_lengths_are_bounded() {
        let (mut core, _k, _d) = core_on(SSH, &[]);
        for huge in ["18446744073709551615", "9223372036854775807", "3651d"] {
            let e = core
                .manual_ban("203.0.113.9", None, Some(huge), None)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("--bantime:") && e.contains("maximum") && e.contains("permanent"),
                "{e}"
            );
        }
        let e = core
            .manual_ban("203.0.113.9", None, Some("0"), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--bantime:"), "{e}");
        let b = core
            .manual_ban("203.0.113.9", None, Some("3650d"), None)
            .unwrap();
        assert_eq!(b.expires_at.unwrap() - b.banned_at, 3650 * 86_400);
        assert!(b.expires_at.unwrap() > now_secs());
        assert_eq!(
            expiry(i64::MAX - 5, BanTime::Finite(Duration::from_secs(600))),
            Some(i64::MAX)
        );
    }

    #[test]
    fn max_tracked_keeps_repeat_offenders_under_a_flood() {
        let (mut core, _k, _d) = core_on(
            "[defaults]\nmaxretry = 3\nmax_tracked = 1000\n\
             [jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['ssh fail from <HOST>$']\n",
            &[],
        );
        let attacker = "203.0.113.66";
        let mut lines = vec![line(format!("ssh fail from {attacker}"), T0)];
        lines.push(line(format!("ssh fail from {attacker}"), T0 + 1));
        // 50,000 one-time addresses, fifty times the cap.
        for i in 0..50_000u32 {
            let ip = std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | u128::from(i));
            lines.push(line(format!("ssh fail from {ip}"), T0 + 2));
        }
        lines.push(line(format!("ssh fail from {attacker}"), T0 + 3));
        for chunk in lines.chunks(1024) {
            core.on_lines(chunk);
        }
        let bans = core.bans(None);
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].address, attacker);
        let st = core.status(Some("ssh")).unwrap();
        assert!(st.jails[0].failing_now <= 1000);
        // 50,001 addresses tracked in all, 1,000 at a time.
        assert_eq!(st.jails[0].counters["window_evictions"], 50_001 - 1000);
        let text = crate::api::metrics::Metrics::default().render(&st, 1);
        assert!(
            text.contains("xban_window_evictions_total{jail=\"ssh\"} 49001"),
            "{text}"
        );
    }
}
