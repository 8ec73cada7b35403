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
use crate::enforce::xdp::{self, XdpEnforcer, XdpStats};
use crate::enforce::Enforcer;
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
        self.enforcer.set_allowlist(&self.allowlist)?;
        for rec in self.store.load_bans()? {
            self.book.add(rec);
            report.restored += 1;
        }
        let in_kernel: HashMap<Target, Option<BanClass>> =
            self.enforcer.entries()?.into_iter().collect();
        for target in in_kernel.keys() {
            if self.book.effective(target).is_none() {
                self.enforcer.apply(target, MapChange::Remove)?;
                report.stale_map_entries += 1;
            }
        }
        for (target, class) in self.effective_bans() {
            if in_kernel.get(&target) != Some(&Some(class)) {
                self.enforcer.apply(&target, MapChange::Set(class))?;
            }
        }
        Ok(report)
    }

    /// Each banned target with the class its map entry must have.
    fn effective_bans(&self) -> Vec<(Target, BanClass)> {
        let targets: std::collections::HashSet<Target> =
            self.book.iter().map(|r| r.target).collect();
        targets
            .into_iter()
            .filter_map(|t| self.book.effective(&t).map(|r| (t, r.class)))
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

    fn ban_from_jail(&mut self, req: BanRequest) -> Result<BanRecord> {
        let now = now_secs();
        let rec = BanRecord {
            target: Target::host(req.addr),
            jail: req.jail,
            class: req.class,
            banned_at: now,
            expires_at: expiry(now, req.bantime),
            failures: req.failures,
            matches: req.matches,
        };
        self.apply_ban(rec)
    }

    /// Store, then the kernel, then the log line: a ban reported is a ban kept.
    fn apply_ban(&mut self, rec: BanRecord) -> Result<BanRecord> {
        if let Some(a) = self.allowlisted_by(&rec.target) {
            bail!(
                "{} overlaps the allowlist entry {a} ([defaults] ignoreip): remove it from ignoreip first",
                rec.target
            );
        }
        self.store.put_ban(&rec)?;
        let change = self.book.add(rec.clone());
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
        Ok(rec)
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

    fn jail_status(&self, j: &Jail, detailed: bool) -> JailStatus {
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
            bans_now: self.book.iter().filter(|r| r.jail == j.name()).count(),
            counters: serde_json::to_value(&j.counters).unwrap_or_default(),
            failing,
        }
    }

    pub fn status(&self, jail: Option<&str>) -> Result<StatusView> {
        let jails = match jail {
            Some(name) => {
                let j = self.jail_by_name(name)?;
                vec![self.jail_status(j, true)]
            }
            None => self
                .jails
                .iter()
                .map(|j| self.jail_status(j, false))
                .collect(),
        };
        let effective = self.effective_bans();
        Ok(StatusView {
            interfaces: self.interfaces.clone(),
            xdp_mode: self.xdp_mode.clone(),
            bans_active: effective.len(),
            bans_drop: effective
                .iter()
                .filter(|(_, c)| *c == BanClass::Drop)
                .count(),
            bans_tarpit: effective
                .iter()
                .filter(|(_, c)| *c == BanClass::Tarpit)
                .count(),
            map_entries: self.enforcer.entries().map(|e| e.len()).unwrap_or(0),
            xdp: self
                .enforcer
                .xdp_stats()?
                .map(|s| serde_json::to_value(s).unwrap_or_default()),
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
        self.apply_ban(BanRecord {
            target,
            jail: jail_name,
            class,
            banned_at: now,
            expires_at: expiry(now, bantime),
            failures: 0,
            matches: Vec::new(),
        })
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

/// A running source, whatever its kind.
enum RunningSource {
    Files { jail: String, source: FileSource },
    Journal { jail: String, source: JournalSource },
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
    let mut core = AgentCore::new(&resolved, store, Box::new(maps), &self_addresses())?;
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

    // Every source's lines, tagged with their jail's index.
    let (line_tx, mut line_rx) = mpsc::channel::<(usize, SourceLine)>(4096);
    let mut sources = Vec::new();
    for (idx, jail) in resolved.jails.iter().enumerate() {
        let (tx, mut rx) = mpsc::channel::<SourceLine>(1024);
        let fwd = line_tx.clone();
        tokio::spawn(async move {
            while let Some(l) = rx.recv().await {
                if fwd.send((idx, l)).await.is_err() {
                    break;
                }
            }
        });
        match &jail.source {
            SourceSpec::Files(patterns) => {
                let prefix = format!("file:{}:", jail.name);
                let resume = core
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
                let source = FileSource::spawn(
                    FileSourceOptions {
                        patterns: patterns.clone(),
                        resume,
                        max_line_bytes: 64 * 1024,
                    },
                    tx,
                )
                .await
                .with_context(|| format!("jails.{}.logpath", jail.name))?;
                sources.push(RunningSource::Files {
                    jail: jail.name.clone(),
                    source,
                });
            }
            SourceSpec::Journal(matches) => {
                let key = format!("journal:{}", jail.name);
                let cursor = core.store().cursor(&key)?;
                let source = JournalSource::spawn(
                    JournalSourceOptions {
                        matches: matches.clone(),
                        cursor,
                    },
                    tx,
                )
                .await
                .with_context(|| format!("jails.{} (backend = \"systemd\")", jail.name))?;
                sources.push(RunningSource::Journal {
                    jail: jail.name.clone(),
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
    loop {
        tokio::select! {
            Some((idx, line)) = line_rx.recv() => {
                if let Err(e) = core.on_line(idx, &line) {
                    tracing::error!("jail {}: {e:#}", resolved.jails[idx].name);
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

fn save_positions(core: &mut AgentCore, sources: &[RunningSource]) {
    for s in sources {
        let r = match s {
            RunningSource::Files { jail, source } => source
                .positions()
                .iter()
                .try_for_each(|(path, pos)| core.save_position(&position_key(jail, path), pos)),
            RunningSource::Journal { jail, source } => match source.cursor() {
                Some(c) => core
                    .store()
                    .save_cursor(&format!("journal:{jail}"), &c)
                    .map_err(Into::into),
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
