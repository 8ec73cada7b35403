//! The agent's engine: sources feed jails, jails ask for bans, bans go to
//! the store and then the kernel. [`Agent`] composes the parts — the jails
//! ([`JailSet`]), the bans ([`BanEngine`]: book, store, enforcer, batching,
//! events), escalation ([`Escalator`]), blocklist files ([`BlocklistSync`]),
//! and the views of it all ([`status`]) — and is driven by one loop (the
//! daemon's), so a control request never races a ban.

use anyhow::{Context, Result};

use crate::addr::Target;
use crate::ban::{now_secs, BanBook, BanClass, BanEvent, BanRecord, UnixSecs, MANUAL_JAIL};
use crate::config::ResolvedConfig;
use crate::enforce::Enforcer;
use crate::guard::{BanGuard, BanOrigin, HostAddrs, Refusal};
use crate::jail::Jail;
use crate::source::file::FilePosition;
use crate::store::BanStore;
use crate::units::BanTime;

pub mod backlog;
mod bans;
mod batch;
#[cfg(test)]
mod batch_tests;
mod blocklist_sync;
mod dynamic;
#[cfg(test)]
mod dynamic_tests;
mod escalator;
pub mod fleet_sync;
mod jails;
mod reload;
mod restore;
pub mod routes;
pub mod status;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use bans::BanEngine;
pub use blocklist_sync::BlocklistSync;
pub use dynamic::all_names;
pub use escalator::Escalator;
pub use jails::JailSet;
pub use reload::PreparedReload;
pub use restore::{Phases, RestoreReport, ADOPTED_JAIL};

/// Every piece of the agent's state.
pub struct Agent {
    jails: JailSet,
    bans: BanEngine,
    escalator: Escalator,
    blocklists: BlocklistSync,
    allowlist: Vec<Target>,
    default_bantime: BanTime,
    default_class: BanClass,
    interfaces: Vec<String>,
    xdp_mode: String,
    /// Host names in ignoreip and geo rules.
    dynamic: dynamic::Dynamic,
    /// What a ban may cover (min prefix, allowlist, this host's addresses).
    guard: BanGuard,
    refusals: std::collections::BTreeMap<(&'static str, &'static str), u64>,
    /// Which jails each reader's lines go to.
    routes: routes::LineRoutes,
}

/// An operator's ban (`xban ban`), its options parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ManualBan {
    pub target: Target,
    /// A configured jail whose bantime, class and ignoreip apply; else the
    /// ban is the `manual` jail's, with the defaults.
    pub jail: Option<String>,
    pub bantime: Option<BanTime>,
    pub class: Option<BanClass>,
    /// Lift the min-prefix rule (never the allowlist or this host).
    pub force: bool,
}

impl Agent {
    /// A core whose idea of this host's addresses is `self_addrs` (plus
    /// loopback), fixed; the daemon uses [`with_host`](Self::with_host).
    pub fn new(
        cfg: &ResolvedConfig,
        store: BanStore,
        enforcer: Box<dyn Enforcer>,
        self_addrs: &[Target],
    ) -> Result<Agent> {
        Agent::with_host(cfg, store, enforcer, HostAddrs::fixed(self_addrs.to_vec()))
    }

    /// A core following `host` (the live view: [`HostAddrs::live`]) for
    /// `ignoreself` and the ban guard.
    pub fn with_host(
        cfg: &ResolvedConfig,
        store: BanStore,
        enforcer: Box<dyn Enforcer>,
        host: HostAddrs,
    ) -> Result<Agent> {
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
        Ok(Agent {
            allowlist: cfg.allowlist.clone(),
            jails: JailSet { list: jails },
            bans: BanEngine::new(book, store, enforcer, cfg.dbpurgeage),
            escalator: Escalator::new(cfg.escalation.clone()),
            blocklists: BlocklistSync::new(
                cfg.agent.blocklist_files.clone(),
                cfg.agent.blocklist_append,
            ),
            default_bantime: cfg.default_bantime,
            default_class: cfg.default_class,
            interfaces: Vec::new(),
            xdp_mode: cfg.agent.xdp_mode.to_string(),
            dynamic,
            guard: BanGuard {
                min_prefix_v4: cfg.agent.min_prefix_v4,
                min_prefix_v6: cfg.agent.min_prefix_v6,
                allowlist: cfg.allowlist.clone(),
                host,
            },
            refusals: Default::default(),
            routes: Default::default(),
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
    pub(super) fn guard_ban(
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
        &self.jails.list
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
        self.bans.take_events()
    }

    /// Write the bans waiting in the backlog, when it is time to try again.
    pub fn retry_store(&mut self) {
        self.bans.retry_store()
    }

    pub fn store_health(&self) -> crate::engine::backlog::StoreHealth {
        self.bans.store_health()
    }

    /// Forget ban history older than dbpurgeage.
    pub fn purge_history(&mut self, now: UnixSecs) -> Result<usize> {
        self.bans.purge_history(now)
    }

    /// End the bans that are due; returns how many ended.
    pub fn expire(&mut self, now: UnixSecs) -> Result<usize> {
        self.bans.expire(now)
    }

    /// Banned prefixes that cover `target` (an unban of an address inside
    /// one names them).
    pub fn covering(&self, target: &Target) -> Vec<Target> {
        self.bans.book.covering(target)
    }

    /// XDP's counters (none in a dry run).
    pub fn xdp_stats(&self) -> Result<Option<crate::enforce::xdp::XdpStats>> {
        self.bans.enforcer.xdp_stats()
    }

    /// Does the allowlist (`[defaults] ignoreip`) overlap the target?
    pub fn allowlisted(&self, target: &Target) -> Option<&Target> {
        self.allowlist
            .iter()
            .find(|a| a.covers(target) || target.covers(a))
    }

    /// A manual ban (`xban ban [--force]`): `force` lifts the min-prefix
    /// rule only. Without a jail, the defaults' bantime and class apply.
    pub fn manual_ban(&mut self, ban: ManualBan) -> Result<BanRecord> {
        let ManualBan {
            target,
            jail,
            bantime,
            class,
            force,
        } = ban;
        let (jail_name, jail_bantime, jail_class, jail_allow) = match jail {
            Some(name) => {
                let j = self.jails.by_name(&name)?;
                (name, j.settings.bantime, j.settings.class, j.ignoreip())
            }
            None => (
                MANUAL_JAIL.to_string(),
                self.default_bantime,
                self.default_class,
                Vec::new(),
            ),
        };
        let bantime = bantime.unwrap_or(jail_bantime);
        let class = class.unwrap_or(jail_class);
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

    pub fn save_position(&mut self, key: &str, pos: &FilePosition) -> Result<()> {
        Ok(self
            .bans
            .store
            .save_position(key, pos.dev, pos.inode, pos.offset)?)
    }

    pub fn store(&mut self) -> &mut BanStore {
        &mut self.bans.store
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
