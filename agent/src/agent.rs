//! The agent: sources feed jails, jails ask for bans, bans go to the store and
//! then the kernel. [`AgentCore`] holds every piece of state and is driven by
//! one loop ([`run`]), so a control request never races a ban.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::addr::Target;
use crate::ban::{now_secs, BanBook, BanClass, BanRecord, MapChange, UnixSecs};
use crate::config::{BanTime, Config, ResolvedConfig, SourceSpec};
use crate::control::{self, ControlMessage, Reply, Request};
use crate::enforce::iptables::TarpitSteering;
use crate::enforce::xdp::{self, XdpEnforcer, XdpStats};
use crate::enforce::{Enforcer, KernelEnforcer};
use crate::escalation::{self, EscalationConfig, SubnetTracker, SUBNET_JAIL};
use crate::jail::{BanRequest, Jail, JailVerdict};
use crate::source::file::{FilePosition, FileSource, FileSourceOptions};
use crate::source::journal::{JournalSource, JournalSourceOptions};
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
}

impl From<&BanRecord> for BanView {
    fn from(r: &BanRecord) -> Self {
        BanView {
            address: r.target.to_string(),
            jail: r.jail.clone(),
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
            staged: Vec::new(),
            batching: false,
        })
    }

    pub fn jails(&self) -> &[Jail] {
        &self.jails
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

    /// Feed one line to a jail; ban when it asks.
    pub fn on_line(&mut self, jail: usize, line: &SourceLine) -> Result<Option<BanRecord>> {
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
    /// Inside [`on_lines`](Self::on_lines) the store write joins the batch's
    /// transaction and the rest waits for its commit.
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
        self.enforcer.apply(&rec.target, change)?;
        let bantime = match rec.expires_at {
            Some(e) => crate::config::format_duration(Duration::from_secs(
                (e - rec.banned_at).max(0) as u64,
            )),
            None => "permanent".into(),
        };
        // The recidive filter reads this line: keep its shape.
        tracing::info!(
            "ban {} jail={} class={} bantime={} failures={}",
            rec.target,
            rec.jail,
            rec.class,
            bantime,
            rec.failures
        );
        Ok(())
    }

    /// Feed a batch of lines, each to every jail of its source group
    /// (`groups[g]` lists the jails reading source `g`). The bans they cause
    /// are stored in one transaction, then written to the kernel and logged:
    /// a burst of offenders costs one commit, and a ban is still in the
    /// database before it is in the kernel. Errors are logged per line.
    pub fn on_lines(&mut self, lines: &[(usize, SourceLine)], groups: &[Vec<usize>]) {
        self.store.arm_batch();
        self.batching = true;
        for (group, line) in lines {
            for &jail in &groups[*group] {
                if let Err(e) = self.on_line(jail, line) {
                    tracing::error!("jail {}: {e:#}", self.jails[jail].name());
                }
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
            return;
        }
        for rec in &staged {
            if let Err(e) = self.enforce_ban(rec) {
                tracing::error!("jail {}: {e:#}", rec.jail);
            }
        }
    }

    pub fn unban(&mut self, target: &Target, jail: Option<&str>) -> Result<Vec<BanRecord>> {
        self.store.delete_ban(target, jail)?;
        let (removed, change) = self.book.remove(target, jail);
        self.enforcer.apply(target, change)?;
        if target.is_host() {
            for j in &mut self.jails {
                j.window.forget(&target.addr());
            }
        }
        for r in &removed {
            tracing::info!(
                "unban {} jail={} class={} reason=request",
                r.target,
                r.jail,
                r.class
            );
        }
        Ok(removed)
    }

    /// End the bans that are due; returns how many ended.
    pub fn expire(&mut self, now: UnixSecs) -> Result<usize> {
        let ended = self.book.expire(now);
        for (rec, change) in &ended {
            self.store.delete_ban(&rec.target, Some(&rec.jail))?;
            self.enforcer.apply(&rec.target, *change)?;
            tracing::info!(
                "unban {} jail={} class={} reason=expired",
                rec.target,
                rec.jail,
                rec.class
            );
        }
        Ok(ended.len())
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
        let mut v: Vec<BanView> = self
            .book
            .iter()
            .filter(|r| jail.is_none_or(|j| r.jail == j))
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
                    if j != MANUAL_JAIL {
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
            Request::Unban { target, jail } => {
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
            Request::Teardown => Ok(serde_json::Value::Null),
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

/// Lines handled per turn of the main loop at most, so that a control
/// request waits for at most one batch.
const LINE_BATCH: usize = 1024;

/// A running source, whatever its kind, and the jails reading it.
enum RunningSource {
    Files {
        jails: Vec<String>,
        source: FileSource,
    },
    Journal {
        jails: Vec<String>,
        source: JournalSource,
    },
}

/// Where a group of jails reads: the same sources, resumed from the same
/// place.
#[derive(Debug, PartialEq)]
enum GroupSpec {
    Files {
        patterns: Vec<String>,
        resume: HashMap<PathBuf, FilePosition>,
    },
    Journal {
        matches: Vec<String>,
        cursor: Option<String>,
    },
}

#[derive(Debug)]
struct SourceGroup {
    spec: GroupSpec,
    /// Indices into the config's jails, in config order.
    jails: Vec<usize>,
}

/// Groups jails that can share a reader: same log patterns (or journal
/// matches) and the same saved positions (or cursor), so that each jail
/// still sees every line exactly once. Jails whose saved positions differ
/// (e.g. one added since the last run) get their own reader.
fn source_groups(cfg: &ResolvedConfig, store: &mut BanStore) -> Result<Vec<SourceGroup>> {
    let mut groups: Vec<SourceGroup> = Vec::new();
    for (idx, jail) in cfg.jails.iter().enumerate() {
        let spec = match &jail.source {
            SourceSpec::Files(patterns) => {
                let prefix = format!("file:{}:", jail.name);
                let resume = store
                    .positions_with_prefix(&prefix)?
                    .into_iter()
                    .map(|(k, dev, inode, offset)| {
                        (
                            PathBuf::from(&k[prefix.len()..]),
                            FilePosition { dev, inode, offset },
                        )
                    })
                    .collect();
                GroupSpec::Files {
                    patterns: patterns.clone(),
                    resume,
                }
            }
            SourceSpec::Journal(matches) => GroupSpec::Journal {
                matches: matches.clone(),
                cursor: store.cursor(&format!("journal:{}", jail.name))?,
            },
        };
        match groups.iter_mut().find(|g| g.spec == spec) {
            Some(g) => g.jails.push(idx),
            None => groups.push(SourceGroup {
                spec,
                jails: vec![idx],
            }),
        }
    }
    Ok(groups)
}

fn position_key(jail: &str, path: &Path) -> String {
    format!("file:{jail}:{}", path.display())
}

/// `xban run`: set up, restore, attach, and serve until a signal.
pub async fn run(config_path: &Path) -> Result<()> {
    let cfg = Config::load(config_path)?;
    let resolved = cfg
        .validate()
        .with_context(|| format!("config {}", config_path.display()))?;
    let agent = &resolved.agent;

    crate::setup::check_capabilities()?;
    crate::setup::ensure_bpffs(&agent.bpf_pin_dir)?;
    crate::setup::private_dir(&agent.state_dir)?;
    let interfaces = if agent.interfaces.is_empty() {
        vec![crate::setup::default_route_interface()?]
    } else {
        agent.interfaces.clone()
    };
    // Bind first: a second agent must fail before touching the kernel.
    let listener = control::bind(&agent.socket)?;

    let store = BanStore::open(&agent.state_dir)?;
    let (mut program, maps) = XdpEnforcer::load(&agent.bpf_pin_dir)?;
    let steering = setup_steering(&resolved)?;
    let enforcer = KernelEnforcer {
        xdp: maps,
        steering: Some(steering),
    };
    let mut core = AgentCore::new(&resolved, store, Box::new(enforcer), &self_addresses())?;
    let report = core.restore(now_secs())?;
    tracing::info!(
        restored = report.restored,
        expired = report.expired,
        stale = report.stale_map_entries,
        "bans restored from {}",
        agent.state_dir.display()
    );
    program.attach(&interfaces, agent.xdp_mode)?;
    core.interfaces = interfaces.clone();

    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlMessage>(64);
    tokio::spawn(control::serve(listener, ctl_tx));

    // Every source's lines, tagged with their group's index: jails that read
    // the same logs from the same place share one reader, so with 20 jails on
    // auth.log the file is read, split and sent once and each jail tests
    // every line.
    let groups = source_groups(&resolved, core.store())?;
    let jails_of: Vec<Vec<usize>> = groups.iter().map(|g| g.jails.clone()).collect();
    let (line_tx, mut line_rx) = mpsc::channel::<(usize, SourceLine)>(4096);
    let mut sources = Vec::new();
    for (idx, group) in groups.into_iter().enumerate() {
        let (tx, mut rx) = mpsc::channel::<SourceLine>(1024);
        let fwd = line_tx.clone();
        tokio::spawn(async move {
            while let Some(l) = rx.recv().await {
                if fwd.send((idx, l)).await.is_err() {
                    break;
                }
            }
        });
        let names: Vec<String> = group
            .jails
            .iter()
            .map(|&j| resolved.jails[j].name.clone())
            .collect();
        match group.spec {
            GroupSpec::Files { patterns, resume } => {
                let source = FileSource::spawn(
                    FileSourceOptions {
                        patterns,
                        resume,
                        max_line_bytes: 64 * 1024,
                    },
                    tx,
                )
                .await
                .with_context(|| format!("jails.{}.logpath", names[0]))?;
                sources.push(RunningSource::Files {
                    jails: names,
                    source,
                });
            }
            GroupSpec::Journal { matches, cursor } => {
                let source = JournalSource::spawn(JournalSourceOptions { matches, cursor }, tx)
                    .await
                    .with_context(|| format!("jails.{} (backend = \"systemd\")", names[0]))?;
                sources.push(RunningSource::Journal {
                    jails: names,
                    source,
                });
            }
        }
    }
    drop(line_tx);
    tracing::info!(
        interfaces = ?interfaces,
        jails = resolved.jails.len(),
        bans = report.restored,
        "xban ready"
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let mut teardown_requested = false;
    // Lines are taken in batches: one wake-up and one store commit per
    // batch instead of per line, which is what keeps up with a burst.
    let mut batch = Vec::with_capacity(LINE_BATCH);
    let mut lines_open = true;
    loop {
        tokio::select! {
            n = line_rx.recv_many(&mut batch, LINE_BATCH), if lines_open => {
                if n == 0 {
                    lines_open = false;
                } else {
                    core.on_lines(&batch, &jails_of);
                    batch.clear();
                }
            }
            Some(msg) = ctl_rx.recv() => {
                let reply = core.handle(&msg.request);
                let is_teardown = msg.request == Request::Teardown;
                let _ = msg.reply.send(reply);
                if is_teardown {
                    teardown_requested = true;
                    break;
                }
            }
            _ = tick.tick() => {
                ticks += 1;
                if let Err(e) = core.expire(now_secs()) {
                    tracing::error!("expiring bans: {e:#}");
                }
                if ticks.is_multiple_of(10) {
                    core.prune_windows(SystemTime::now());
                    save_positions(&mut core, &sources);
                }
                if ticks.is_multiple_of(3600) {
                    if let Err(e) = core.purge_history(now_secs()) {
                        tracing::warn!("purging ban history: {e:#}");
                    }
                }
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }
    save_positions(&mut core, &sources);
    for s in sources {
        match s {
            RunningSource::Files { source, .. } => source.shutdown().await,
            RunningSource::Journal { source, .. } => source.shutdown().await,
        }
    }
    let _ = std::fs::remove_file(&agent.socket);
    drop(core);
    drop(program);
    if teardown_requested || !agent.keep_on_exit {
        TarpitSteering::teardown(&resolved.tarpit)?;
        let removed = xdp::teardown(&agent.bpf_pin_dir)?;
        tracing::info!(
            removed = removed.len(),
            "teardown: XDP detached, maps and pins removed"
        );
    } else {
        tracing::info!(
            "stopped; XDP stays attached and bans keep dropping until the next agent adopts them"
        );
    }
    Ok(())
}

/// Create or adopt the tarpit chain and sets; say clearly when TARPIT is
/// missing and what happens instead.
fn setup_steering(cfg: &ResolvedConfig) -> Result<TarpitSteering> {
    let steering = TarpitSteering::setup(&cfg.tarpit).context("[tarpit] steering set-up")?;
    if let Some(notice) = steering.notice() {
        tracing::warn!("{notice}");
    }
    if !steering.mode().is_active() && steering.leftovers() {
        // Tarpit bans are now dropped at XDP; the old chain and sets would
        // keep steering addresses that get unbanned later.
        TarpitSteering::teardown(&cfg.tarpit)
            .context("remove the tarpit chain and sets an earlier run left")?;
        tracing::info!("removed the tarpit chain and sets left by an earlier run");
    }
    tracing::info!(mode = %steering.mode(), "tarpit steering");
    Ok(steering)
}

fn save_positions(core: &mut AgentCore, sources: &[RunningSource]) {
    for s in sources {
        let r = match s {
            RunningSource::Files { jails, source } => {
                let positions = source.positions();
                jails.iter().try_for_each(|jail| {
                    positions.iter().try_for_each(|(path, pos)| {
                        core.save_position(&position_key(jail, path), pos)
                    })
                })
            }
            RunningSource::Journal { jails, source } => match source.cursor() {
                Some(c) => jails.iter().try_for_each(|jail| {
                    core.store()
                        .save_cursor(&format!("journal:{jail}"), &c)
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

/// XDP counters from the pinned map, with or without a running agent.
pub fn read_stats(pin_dir: &Path) -> Result<XdpStats> {
    xdp::XdpMaps::from_pins(pin_dir)?.stats()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::UNIX_EPOCH;

    /// The kernel's view, as an enforcer would leave it.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<HashMap<Target, BanClass>>>);

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
            self.core.on_line(jail, &line).unwrap()
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

    fn line(text: &str, log_time: u64) -> SourceLine {
        SourceLine {
            origin: Arc::from("/l"),
            text: text.to_string(),
            read_at: std::time::SystemTime::now(),
            time: Some(UNIX_EPOCH + Duration::from_secs(log_time)),
        }
    }

    #[test]
    fn a_batch_of_lines_bans_in_one_commit_and_escalates_within_it() {
        let mut f = fixture("");
        let a = "203.0.113.20";
        // Both jails read the same file: one source group, each jail sees
        // every line. Three bans of `a` in one batch: the third must count
        // the first two, which are not committed yet.
        let texts = [
            ("ssh", T0),
            ("ssh", T0 + 1),
            ("web", T0 + 2),
            ("web", T0 + 3),
            ("ssh", T0 + 4),
            ("ssh", T0 + 5),
        ];
        let lines: Vec<(usize, SourceLine)> = texts
            .iter()
            .map(|(j, t)| (0, line(&format!("{j} fail from {a}"), *t)))
            .collect();
        f.core.on_lines(&lines, &[vec![0, 1]]);
        assert_eq!(f.kernel(a), Some(BanClass::Drop));
        let t: Target = a.parse().unwrap();
        assert_eq!(f.core.store.ban_count_since(&t, None, 0).unwrap(), 3);
        let ssh = &f.core.bans(Some("ssh"))[0];
        assert_eq!(
            ssh.expires_at.unwrap() - ssh.banned_at,
            7 * 86_400,
            "the third ban in a day climbs the ladder"
        );
        assert_eq!(f.core.bans(None).len(), 2, "one record per jail");
        // Every jail counted every line of its group.
        assert!(f.core.jails().iter().all(|j| j.counters.lines == 6));
        // The book keeps no matched lines; the store has them.
        assert!(f.core.book.iter().all(|r| r.matches.is_empty()));
        assert_eq!(f.core.store.load_bans().unwrap()[0].matches.len(), 2);
    }

    #[test]
    fn jails_share_a_reader_only_from_the_same_place() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[agent]\nfilters_dir = \"{}\"\n\
             [jails.a]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>$']\n\
             [jails.b]\nlogpath = [\"/l\"]\nfailregex = ['y <HOST>$']\n\
             [jails.c]\nlogpath = [\"/m\"]\nfailregex = ['z <HOST>$']\n",
            dir.path().join("none").display()
        );
        let cfg = Config::parse(&text).unwrap().validate().unwrap();
        let mut store = BanStore::open(dir.path()).unwrap();
        let jails = |g: &[SourceGroup]| g.iter().map(|g| g.jails.clone()).collect::<Vec<_>>();
        assert_eq!(
            jails(&source_groups(&cfg, &mut store).unwrap()),
            vec![vec![0, 1], vec![2]]
        );
        // `a` read further than `b` last time: they must not share a reader.
        store.save_position("file:a:/l", 1, 2, 300).unwrap();
        store.save_position("file:b:/l", 1, 2, 100).unwrap();
        assert_eq!(
            jails(&source_groups(&cfg, &mut store).unwrap()),
            vec![vec![0], vec![1], vec![2]]
        );
        store.save_position("file:b:/l", 1, 2, 300).unwrap();
        assert_eq!(
            jails(&source_groups(&cfg, &mut store).unwrap()),
            vec![vec![0, 1], vec![2]]
        );
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
        kernel
            .0
            .lock()
            .unwrap()
            .insert("203.0.113.1".parse().unwrap(), BanClass::Drop);
        kernel
            .0
            .lock()
            .unwrap()
            .insert("203.0.113.99".parse().unwrap(), BanClass::Drop);
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
